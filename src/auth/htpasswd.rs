//! The htpasswd file: parsed once, read again whenever it changes on disk,
//! with a short-lived cache of successful checks.
//!
//! The deployment rewrites the file while navigator runs, so every check
//! first compares the file's modification time, size and inode with those
//! of the parsed copy (one `stat`) and parses it again when they differ.
//!
//! bcrypt costs tens of milliseconds per check, so a successful check is
//! remembered for [`CACHE_TTL`], keyed by the user name and a SHA-256 of a
//! random per-process salt and the password. The password itself is never
//! stored. A failed check is never cached, and any change of the file
//! empties the cache.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;
use tracing::{error, info, warn};

use super::hash::PasswordHash;

/// How long a successful check stays cached.
pub const CACHE_TTL: Duration = Duration::from_secs(300);

/// Cached checks kept at most; past it, expired entries go, and if that is
/// not enough, all of them.
const CACHE_CAPACITY: usize = 4096;

/// Minimum time between two error lines about a missing file.
const MISSING_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A problem on one line of an htpasswd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineProblem {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// The users of one version of the file.
#[derive(Debug, Default)]
pub struct Users {
    entries: HashMap<String, Arc<PasswordHash>>,
    /// A hash checked for unknown users, so that a wrong user name takes
    /// about as long as a wrong password (the first bcrypt entry, else the
    /// first entry).
    decoy: Option<Arc<PasswordHash>>,
    /// Increases with every parse; cache entries of older versions are void.
    generation: u64,
}

impl Users {
    /// Parses htpasswd `text`: one `user:hash` per line; blank lines and
    /// lines starting with `#` are skipped. A malformed line, or a second
    /// line for the same user, is reported and skipped.
    pub fn parse(text: &str) -> (Users, Vec<LineProblem>) {
        let mut users = Users::default();
        let mut problems = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let mut report = |message: String| {
                problems.push(LineProblem {
                    line: index + 1,
                    message,
                })
            };
            let Some((user, field)) = line.split_once(':') else {
                report("expected `user:hash`; the line has no `:`".into());
                continue;
            };
            if user.is_empty() {
                report("the user name is empty".into());
                continue;
            }
            let hash = match PasswordHash::parse(field) {
                Ok(hash) => Arc::new(hash),
                Err(error) => {
                    report(format!("user {user:?}: {error}"));
                    continue;
                }
            };
            if users.entries.contains_key(user) {
                report(format!(
                    "user {user:?} appears again; the first entry is used"
                ));
                continue;
            }
            let better_decoy = match &users.decoy {
                None => true,
                Some(current) => {
                    matches!(*hash, PasswordHash::Bcrypt(_))
                        && !matches!(**current, PasswordHash::Bcrypt(_))
                }
            };
            if better_decoy {
                users.decoy = Some(hash.clone());
            }
            users.entries.insert(user.to_string(), hash);
        }
        (users, problems)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The identity of one version of the file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: metadata.ino(),
        })
    }
}

/// The parsed copy and the stamp of the file it was parsed from. No stamp
/// means the file was missing or unreadable at the last look.
struct Snapshot {
    stamp: Option<FileStamp>,
    users: Arc<Users>,
}

/// Successful checks of the current file generation.
#[derive(Default)]
struct Cache {
    generation: u64,
    entries: HashMap<(String, [u8; 32]), Instant>,
}

/// The result of a credential check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Invalid,
    /// The file is missing or unreadable, so no user can be authenticated.
    FileMissing,
}

/// An htpasswd file and the cache of checks made against it.
pub struct Htpasswd {
    path: PathBuf,
    snapshot: RwLock<Snapshot>,
    cache: Mutex<Cache>,
    /// Random per process, so cache keys reveal nothing about passwords.
    salt: [u8; 32],
    /// Bounds concurrent expensive verifications (one per core), so a flood
    /// of wrong passwords queues here instead of filling the blocking pool.
    verifications: Semaphore,
    next_generation: std::sync::atomic::AtomicU64,
    last_missing_log: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Htpasswd {
    /// Opens `path` and parses it if it exists. A missing file is not an
    /// error here: checks fail until it appears.
    pub fn open(path: &Path) -> Htpasswd {
        let mut salt = [0u8; 32];
        if let Err(error) = getrandom::fill(&mut salt) {
            // Without OS randomness the cache keys are still SHA-256
            // digests, only without the per-process secret.
            warn!(error = %error, "no OS randomness for the htpasswd cache salt");
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let htpasswd = Htpasswd {
            path: path.to_path_buf(),
            snapshot: RwLock::new(Snapshot {
                stamp: None,
                users: Arc::new(Users::default()),
            }),
            cache: Mutex::new(Cache::default()),
            salt,
            verifications: Semaphore::new(cores),
            next_generation: std::sync::atomic::AtomicU64::new(1),
            last_missing_log: Mutex::new(None),
        };
        htpasswd.current();
        htpasswd
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks whether the file exists and is readable, parsing it again if it changed.
    pub fn is_available(&self) -> bool {
        self.current().is_some()
    }

    /// Checks `user` and `password`. Expensive hashes are verified on a
    /// blocking thread; at most one per core at a time.
    pub async fn check(&self, user: &str, password: &[u8]) -> Verdict {
        let Some(users) = self.current() else {
            self.log_missing();
            return Verdict::FileMissing;
        };

        let key = (user.to_string(), self.password_digest(password));
        if self.cached(users.generation, &key) {
            return Verdict::Valid;
        }

        let (hash, known) = match users.entries.get(user) {
            Some(hash) => (hash.clone(), true),
            None => match &users.decoy {
                Some(decoy) => (decoy.clone(), false),
                None => return Verdict::Invalid,
            },
        };
        let matches = if hash.is_expensive() {
            let Ok(_permit) = self.verifications.acquire().await else {
                return Verdict::Invalid;
            };
            let password = password.to_vec();
            tokio::task::spawn_blocking(move || hash.verify(&password))
                .await
                .unwrap_or(false)
        } else {
            hash.verify(password)
        };

        if matches && known {
            self.remember(users.generation, key);
            Verdict::Valid
        } else {
            Verdict::Invalid
        }
    }

    /// Returns the users of the file as it is on disk now, parsing it
    /// again if it changed, or `None` when it is missing or unreadable.
    fn current(&self) -> Option<Arc<Users>> {
        let stamp = FileStamp::of(&self.path);
        {
            let snapshot = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
            if snapshot.stamp == stamp {
                return stamp.map(|_| snapshot.users.clone());
            }
        }

        let mut snapshot = self.snapshot.write().unwrap_or_else(|p| p.into_inner());
        if snapshot.stamp == stamp {
            return stamp.map(|_| snapshot.users.clone());
        }
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let users = match stamp.map(|_| std::fs::read_to_string(&self.path)) {
            Some(Ok(text)) => {
                let (mut users, problems) = Users::parse(&text);
                for problem in &problems {
                    warn!(
                        htpasswd = %self.path.display(),
                        line = problem.line,
                        problem = %problem.message,
                        "skipped a malformed htpasswd line"
                    );
                }
                users.generation = generation;
                info!(
                    htpasswd = %self.path.display(),
                    users = users.len(),
                    skipped = problems.len(),
                    "htpasswd file loaded"
                );
                Some(users)
            }
            Some(Err(read_error)) => {
                error!(htpasswd = %self.path.display(), error = %read_error, "cannot read the htpasswd file; denying every request that needs credentials");
                None
            }
            None => None,
        };
        self.clear_cache(generation);
        match users {
            Some(users) => {
                let users = Arc::new(users);
                *snapshot = Snapshot {
                    stamp,
                    users: users.clone(),
                };
                Some(users)
            }
            None => {
                *snapshot = Snapshot {
                    stamp: None,
                    users: Arc::new(Users::default()),
                };
                None
            }
        }
    }

    fn password_digest(&self, password: &[u8]) -> [u8; 32] {
        let mut sha = Sha256::new();
        sha.update(self.salt);
        sha.update(password);
        sha.finalize().into()
    }

    fn cached(&self, generation: u64, key: &(String, [u8; 32])) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.generation == generation
            && cache
                .entries
                .get(key)
                .is_some_and(|stored| stored.elapsed() < CACHE_TTL)
    }

    /// Caches a successful check, unless the file changed while it ran.
    fn remember(&self, generation: u64, key: (String, [u8; 32])) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation != generation {
            return;
        }
        if cache.entries.len() >= CACHE_CAPACITY {
            cache
                .entries
                .retain(|_, stored| stored.elapsed() < CACHE_TTL);
            if cache.entries.len() >= CACHE_CAPACITY {
                cache.entries.clear();
            }
        }
        cache.entries.insert(key, Instant::now());
    }

    fn clear_cache(&self, generation: u64) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.generation = generation;
        cache.entries.clear();
    }

    fn log_missing(&self) {
        let mut last = self
            .last_missing_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < MISSING_LOG_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        error!(
            htpasswd = %self.path.display(),
            "htpasswd file is missing; denying every request that needs credentials"
        );
    }

    /// Number of cached successful checks, for tests.
    pub fn cached_checks(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "judge:$2y$05$8gm8sB.L7CRWAuQ6dO9Yy.hbmZk26on0WogB/nN5GWMaB./8rb1jS\n\
                        organizer:$apr1$iYTQalFy$7uKvGi0NDzGglO3VB8mNU/\n\
                        scorer:{SHA}KkPcK3XYeA35EhWhKYmaCyAgadY=\n\
                        emcee:plain-secret\n\
                        studio:$1$SBxY4Rd6$kTkdlZOAnJwqJ6nlHm2J.1\n";

    #[test]
    fn parse_reports_malformed_lines_and_keeps_rest() {
        let text = "# comment\n\
                    judge:plain-a\n\
                    no-colon-here\n\
                    :empty-user\n\
                    broken:$apr1$salt\n\
                    \n\
                    judge:plain-b\r\n\
                    emcee:plain-c\r\n";
        let (users, problems) = Users::parse(text);
        assert_eq!(users.len(), 2);
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, vec![3, 4, 5, 7]);
        assert!(problems[2].message.contains("broken"));
        assert!(problems[3].message.contains("appears again"));
        assert!(users.entries["judge"].verify(b"plain-a"));
        assert!(users.entries["emcee"].verify(b"plain-c"));
    }

    #[test]
    fn decoy_prefers_bcrypt() {
        let (users, _) = Users::parse(FILE);
        assert!(matches!(
            users.decoy.as_deref(),
            Some(PasswordHash::Bcrypt(_))
        ));
    }

    #[tokio::test]
    async fn check_each_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, FILE).unwrap();
        let htpasswd = Htpasswd::open(&path);
        for (user, password) in [
            ("judge", "bcrypt-secret"),
            ("organizer", "apr1-secret"),
            ("scorer", "sha-secret"),
            ("emcee", "plain-secret"),
            ("studio", "crypt-secret"),
        ] {
            assert_eq!(
                htpasswd.check(user, password.as_bytes()).await,
                Verdict::Valid,
                "{user}"
            );
            assert_eq!(
                htpasswd.check(user, b"bcrypt-secret-wrong").await,
                Verdict::Invalid,
                "{user}"
            );
        }
        assert_eq!(
            htpasswd.check("nobody", b"bcrypt-secret").await,
            Verdict::Invalid
        );
    }

    #[tokio::test]
    async fn cache_keeps_successes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, FILE).unwrap();
        let htpasswd = Htpasswd::open(&path);

        assert_eq!(htpasswd.check("judge", b"wrong").await, Verdict::Invalid);
        assert_eq!(htpasswd.cached_checks(), 0);
        assert_eq!(
            htpasswd.check("judge", b"bcrypt-secret").await,
            Verdict::Valid
        );
        assert_eq!(htpasswd.cached_checks(), 1);
        assert_eq!(htpasswd.check("judge", b"wrong").await, Verdict::Invalid);
        assert_eq!(
            htpasswd.check("organizer", b"bcrypt-secret").await,
            Verdict::Invalid
        );
    }

    #[tokio::test]
    async fn changed_file_reloads_and_clears_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        std::fs::write(&path, FILE).unwrap();
        let htpasswd = Htpasswd::open(&path);
        assert_eq!(
            htpasswd.check("judge", b"bcrypt-secret").await,
            Verdict::Valid
        );

        // A rename over the old file, as deploy scripts do: new inode.
        let next = dir.path().join("htpasswd.new");
        std::fs::write(&next, "judge:new-plain\n").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(htpasswd.cached_checks(), 1);
        assert_eq!(
            htpasswd.check("judge", b"bcrypt-secret").await,
            Verdict::Invalid
        );
        assert_eq!(htpasswd.cached_checks(), 0);
        assert_eq!(htpasswd.check("judge", b"new-plain").await, Verdict::Valid);

        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            htpasswd.check("judge", b"new-plain").await,
            Verdict::FileMissing
        );
        assert!(!htpasswd.is_available());

        std::fs::write(&path, "judge:back\n").unwrap();
        assert_eq!(htpasswd.check("judge", b"back").await, Verdict::Valid);
    }

    #[test]
    fn cache_digest_depends_on_salt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing");
        let first = Htpasswd::open(&path);
        let second = Htpasswd::open(&path);
        assert_ne!(
            first.password_digest(b"secret"),
            second.password_digest(b"secret")
        );
        assert_ne!(
            first.password_digest(b"secret").to_vec(),
            b"secret".to_vec()
        );
    }
}
