//! Resident memory of tenant process groups, read from `/proc`.
//!
//! A tenant's memory is the sum of `VmRSS` over every process in its
//! process group (the tenant runs as the leader of its own group), so
//! Puma workers forked by a cluster-mode master count too. Pages that
//! forked workers still share with their master are counted once per
//! process, so the sum overstates what the group would free on exit.

use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Returns the summed resident memory in bytes of each process group in
/// `groups` that has at least one live process. Processes that exit
/// during the scan are skipped.
pub fn group_rss(proc_root: &Path, groups: &HashSet<u32>) -> HashMap<u32, u64> {
    let mut totals = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return totals;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Some(group) = std::fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|stat| process_group(&stat))
        else {
            continue;
        };
        if !groups.contains(&group) {
            continue;
        }
        let rss = std::fs::read_to_string(entry.path().join("status"))
            .ok()
            .and_then(|status| vm_rss_bytes(&status));
        if let Some(rss) = rss {
            *totals.entry(group).or_insert(0) += rss;
        } else if pid == group {
            // A zombie leader has no VmRSS line but the group still exists.
            totals.entry(group).or_insert(0);
        }
    }
    totals
}

/// Parses the process group id (the fifth field) from `/proc/PID/stat`.
/// The command name in parentheses may contain spaces and parentheses,
/// so fields are counted after the last `)`.
fn process_group(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    // state, ppid, pgrp
    fields.nth(2)?.parse().ok()
}

/// Parses `VmRSS:   123456 kB` from `/proc/PID/status` into bytes.
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_group_after_odd_command_name() {
        let stat = "4242 (ruby (puma) 1) S 1 4240 4240 0 -1 4194560 1234";
        assert_eq!(process_group(stat), Some(4240));
        assert_eq!(process_group("garbage"), None);
    }

    #[test]
    fn vm_rss_in_bytes() {
        let status = "Name:\tpuma\nVmPeak:\t  900 kB\nVmRSS:\t  614400 kB\nThreads:\t5\n";
        assert_eq!(vm_rss_bytes(status), Some(614_400 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tkworker\n"), None);
    }

    #[test]
    fn own_group_has_memory() {
        let own = std::process::id();
        let group = nix::unistd::getpgrp().as_raw() as u32;
        let totals = group_rss(Path::new("/proc"), &HashSet::from([group]));
        let rss = totals.get(&group).copied().unwrap_or(0);
        assert!(rss > 0, "no memory found for group {group} of pid {own}");
    }
}
