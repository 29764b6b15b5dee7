//! The user and group a child process runs as.
//!
//! Names are resolved in the parent, before fork, because looking them up
//! reads files and allocates, which the forked child must not do. The child
//! then only makes the `setgroups`, `setgid` and `setuid` system calls.

use std::fmt;
use std::path::PathBuf;

use nix::unistd::{Gid, Group, Uid, User};

use crate::compile::Snapshot;

/// Credentials a child switches to before exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `None` keeps navigator's own user and changes only the group.
    pub uid: Option<Uid>,
    pub gid: Gid,
    /// The passwd entry of the user, when there is one: its name and home
    /// directory become `USER`, `LOGNAME` and `HOME`.
    pub account: Option<Account>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub home: PathBuf,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.account, self.uid) {
            (Some(account), Some(uid)) => write!(f, "user `{}` (uid {uid}", account.name)?,
            (None, Some(uid)) => write!(f, "uid {uid} (")?,
            (_, None) => write!(f, "navigator's user (")?,
        }
        write!(f, ", gid {})", self.gid)
    }
}

/// Resolves `user` and `group`, each a name or a numeric id, into the ids
/// a child switches to. Without `group` the user's primary group is used.
/// Returns `Ok(None)` when neither is set.
///
/// The error names the account and the fix, e.g. "user `rails` not found
/// (no passwd entry); create it or change `user`".
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Option<Identity>, String> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }

    let (uid, account, primary_gid) = match user {
        None => (None, None, None),
        Some(user) => {
            let entry = lookup_user(user)?;
            match entry {
                Some(entry) => (
                    Some(entry.uid),
                    Some(Account {
                        name: entry.name,
                        home: entry.dir,
                    }),
                    Some(entry.gid),
                ),
                // A numeric uid without a passwd entry is allowed, as in
                // containers that run processes under bare ids.
                None => (
                    Some(
                        parse_id(user)
                            .map(Uid::from_raw)
                            .ok_or_else(|| not_found("user", user))?,
                    ),
                    None,
                    None,
                ),
            }
        }
    };

    let gid = match group {
        Some(group) => lookup_group(group)?,
        None => primary_gid.ok_or_else(|| {
            format!(
                "user `{}` has no passwd entry, so it has no primary group; set `group` too",
                user.unwrap_or_default()
            )
        })?,
    };

    Ok(Some(Identity { uid, gid, account }))
}

fn parse_id(text: &str) -> Option<u32> {
    text.parse().ok()
}

fn not_found(kind: &str, name: &str) -> String {
    let database = if kind == "user" { "passwd" } else { "group" };
    format!("{kind} `{name}` not found (no {database} entry); create it or change `{kind}`")
}

/// Returns the passwd entry of a user name or numeric uid. A numeric uid
/// without an entry returns `Ok(None)`; an unknown name is an error.
fn lookup_user(user: &str) -> Result<Option<User>, String> {
    let lookup_failed = |error: nix::Error| format!("failed to look up user `{user}`: {error}");
    match parse_id(user) {
        Some(uid) => User::from_uid(Uid::from_raw(uid)).map_err(lookup_failed),
        None => match User::from_name(user).map_err(lookup_failed)? {
            Some(entry) => Ok(Some(entry)),
            None => Err(not_found("user", user)),
        },
    }
}

fn lookup_group(group: &str) -> Result<Gid, String> {
    if let Some(gid) = parse_id(group) {
        return Ok(Gid::from_raw(gid));
    }
    match Group::from_name(group) {
        Ok(Some(entry)) => Ok(entry.gid),
        Ok(None) => Err(not_found("group", group)),
        Err(error) => Err(format!("failed to look up group `{group}`: {error}")),
    }
}

/// Returns whether navigator can switch a child's user and group, which
/// only root can.
pub fn can_switch() -> bool {
    Uid::effective().is_root()
}

/// Lists users and groups the config names that do not exist on this
/// machine, for `navigator check`. They are warnings because the config
/// is often checked on another machine than the one that runs it. A start
/// that needs a missing account fails with the same message.
pub fn missing_accounts(snapshot: &Snapshot) -> Vec<String> {
    let config = &snapshot.config;
    let mut named: Vec<(String, &str, &str)> = Vec::new();
    let pools = &config.applications.pools;
    if let Some(user) = &pools.user {
        named.push(("applications.pools.user".into(), "user", user));
    }
    if let Some(group) = &pools.group {
        named.push(("applications.pools.group".into(), "group", group));
    }
    for (i, tenant) in snapshot
        .loaded
        .config
        .applications
        .tenants
        .iter()
        .enumerate()
    {
        if let Some(user) = &tenant.user {
            named.push((format!("applications.tenants[{i}].user"), "user", user));
        }
        if let Some(group) = &tenant.group {
            named.push((format!("applications.tenants[{i}].group"), "group", group));
        }
    }
    for (i, script) in config.server.cgi_scripts.iter().enumerate() {
        if let Some(user) = &script.user {
            named.push((format!("server.cgi_scripts[{i}].user"), "user", user));
        }
        if let Some(group) = &script.group {
            named.push((format!("server.cgi_scripts[{i}].group"), "group", group));
        }
    }

    named
        .into_iter()
        .filter_map(|(key, kind, name)| {
            let result = if kind == "user" {
                lookup_user(name).map(|_| ())
            } else {
                lookup_group(name).map(|_| ())
            };
            result.err().map(|error| format!("{key}: {error}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_nothing_is_none() {
        assert_eq!(resolve(None, None), Ok(None));
    }

    #[test]
    fn resolve_root_by_name_and_id() {
        let by_name = resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!(by_name.uid, Some(Uid::from_raw(0)));
        assert_eq!(by_name.gid, Gid::from_raw(0));
        let account = by_name.account.as_ref().unwrap();
        assert_eq!(account.name, "root");
        assert_eq!(account.home, PathBuf::from("/root"));

        let by_id = resolve(Some("0"), Some("0")).unwrap().unwrap();
        assert_eq!(by_id, by_name);
    }

    #[test]
    fn resolve_group_only_keeps_user() {
        let identity = resolve(None, Some("root")).unwrap().unwrap();
        assert_eq!(identity.uid, None);
        assert_eq!(identity.gid, Gid::from_raw(0));
    }

    #[test]
    fn resolve_numeric_uid_without_entry() {
        // No passwd entry has this uid on any sane system.
        let error = resolve(Some("3999999"), None).unwrap_err();
        assert!(error.contains("set `group` too"), "{error}");
        let identity = resolve(Some("3999999"), Some("3999998")).unwrap().unwrap();
        assert_eq!(identity.uid, Some(Uid::from_raw(3_999_999)));
        assert_eq!(identity.gid, Gid::from_raw(3_999_998));
        assert_eq!(identity.account, None);
    }

    #[test]
    fn resolve_unknown_names_fail() {
        let error = resolve(Some("no-such-user-navtest"), None).unwrap_err();
        assert_eq!(
            error,
            "user `no-such-user-navtest` not found (no passwd entry); create it or change `user`"
        );
        let error = resolve(Some("root"), Some("no-such-group-navtest")).unwrap_err();
        assert_eq!(
            error,
            "group `no-such-group-navtest` not found (no group entry); create it or change `group`"
        );
    }

    #[test]
    fn identity_display_names_ids() {
        let identity = resolve(Some("root"), None).unwrap().unwrap();
        assert_eq!(identity.to_string(), "user `root` (uid 0, gid 0)");
    }
}
