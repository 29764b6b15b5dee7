//! Small static files kept in memory with their response headers, so a
//! repeated plain GET is answered without the blocking pool.
//!
//! An entry is made only from a full lookup that served a whole file
//! (status 200, no precompressed sibling, no precondition or range in the
//! request), under the canonical request path. A hit is served only while
//! the entry is younger than [`FRESH_FOR`] and `stat` of the file the
//! lookup opened still reports the same device, inode, size, modification
//! and change times. So a changed, replaced, removed or retargeted file is
//! noticed on the next request; what the check cannot see (a precompressed
//! sibling or a `try_files` candidate created meanwhile) is noticed within
//! [`FRESH_FOR`].
//!
//! The `stat` runs on the runtime thread: it is one system call on a path
//! the kernel resolved a moment ago, cheaper than a trip to the blocking
//! pool. A hit on a file of [`SEND_FILE_MIN_BYTES`] or more opens the file
//! there instead and checks the open handle, which the lean HTTP/1 server
//! then sends with `sendfile`.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Response, StatusCode, header};

use crate::body::{self, Body, WholeFile};

/// How long an entry is served on its `stat` check alone.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(1);
/// Files larger than this are not kept. The limit is meant to admit an
/// app's JavaScript and CSS bundles (an estimate of their size), so they
/// are written from memory rather than read in chunks each time.
pub(super) const MAX_FILE_BYTES: usize = 1024 * 1024;
/// A hit on a file at least this large opens the file, and the response
/// is marked for `sendfile` ([`WholeFile`]). Below it a copy costs less
/// than the extra system calls.
pub(super) const SEND_FILE_MIN_BYTES: u64 = 64 * 1024;
/// The bodies kept, all entries together. When a new body does not fit,
/// expired entries go first, then the oldest.
const MAX_TOTAL_BYTES: usize = 16 * 1024 * 1024;

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    pub(super) fn change_time(&self) -> (i64, i64) {
        self.ctime
    }

    pub(super) fn of(metadata: &Metadata) -> Fingerprint {
        Fingerprint {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: body::change_time(metadata),
        }
    }
}

/// The file a lookup served and its version, from `fstat` on the handle
/// it read.
pub(super) struct Served {
    pub(super) path: PathBuf,
    pub(super) fingerprint: Fingerprint,
}

#[derive(Debug)]
struct Entry {
    served: PathBuf,
    fingerprint: Fingerprint,
    headers: HeaderMap,
    body: Bytes,
    loaded: Instant,
}

/// The entries sit behind a reader-writer lock: every connection worker
/// reads at once, and only a full lookup or a stale entry writes.
#[derive(Debug, Default)]
pub(super) struct FileCache {
    state: RwLock<State>,
    /// Requests answered from memory, for tests.
    #[cfg(test)]
    pub(super) hits: std::sync::atomic::AtomicUsize,
}

#[cfg(test)]
impl FileCache {
    /// Returns the bytes of all bodies kept, for tests.
    pub(super) fn total_bytes(&self) -> usize {
        self.read().total_bytes
    }
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Arc<Entry>>,
    total_bytes: usize,
}

impl FileCache {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Drops `entry` for `path`, unless another request replaced it
    /// meanwhile.
    fn forget(&self, path: &str, entry: &Arc<Entry>) {
        let mut state = self.write();
        if state
            .entries
            .get(path)
            .is_some_and(|current| Arc::ptr_eq(current, entry))
        {
            state.remove(path);
        }
    }

    /// Answers a plain GET or HEAD for `path` from memory when the entry
    /// is fresh and its file unchanged; `None` sends it to a full lookup.
    pub(super) fn get(&self, path: &str, request: &Parts, head: bool) -> Option<Response<Body>> {
        if !is_plain(request) {
            return None;
        }
        let entry = self.read().entries.get(path)?.clone();
        if entry.loaded.elapsed() >= FRESH_FOR {
            // An expired entry is never served again, so it goes now. The
            // full lookup makes a new one.
            self.forget(path, &entry);
            return None;
        }
        // A large file is opened, so that the version checked is the one
        // sent; the handle closes with the response. Holding handles in
        // the cache would keep deleted files on disk.
        let send_file = !head && entry.body.len() as u64 >= SEND_FILE_MIN_BYTES;
        let (current, file) = if send_file {
            match File::open(&entry.served) {
                Ok(file) => (file.metadata().ok(), Some(file)),
                Err(_) => (None, None),
            }
        } else {
            (std::fs::metadata(&entry.served).ok(), None)
        };
        if current.is_none_or(|current| Fingerprint::of(&current) != entry.fingerprint) {
            self.forget(path, &entry);
            return None;
        }
        #[cfg(test)]
        self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut response = Response::new(if head {
            body::empty()
        } else {
            body::full(entry.body.clone())
        });
        *response.headers_mut() = entry.headers.clone();
        if let Some(file) = file {
            let change_time = entry.fingerprint.change_time();
            response
                .extensions_mut()
                .insert(WholeFile::new(file, &entry.served, change_time));
        }
        Some(response)
    }

    /// Keeps the answer of a full lookup for `path` when it is a whole
    /// small file for a plain request.
    pub(super) fn insert(
        &self,
        path: &str,
        request: &Parts,
        served: Served,
        response: (StatusCode, &HeaderMap, &Bytes),
    ) {
        let (status, headers, body) = response;
        if !is_plain(request)
            || status != StatusCode::OK
            || body.len() > MAX_FILE_BYTES
            || body.len() as u64 != served.fingerprint.len
        {
            return;
        }
        let entry = Arc::new(Entry {
            served: served.path,
            fingerprint: served.fingerprint,
            headers: headers.clone(),
            body: body.clone(),
            loaded: Instant::now(),
        });
        let mut state = self.write();
        state.remove(path);
        state.make_room(body.len());
        state.total_bytes += body.len();
        state.entries.insert(path.to_owned(), entry);
    }
}

impl State {
    fn remove(&mut self, path: &str) {
        if let Some(old) = self.entries.remove(path) {
            self.total_bytes -= old.body.len();
        }
    }

    /// Evicts entries until `needed` more bytes fit: first every expired
    /// one, as none of them is served again, then the oldest.
    fn make_room(&mut self, needed: usize) {
        if self.total_bytes + needed <= MAX_TOTAL_BYTES {
            return;
        }
        let mut freed = 0;
        self.entries.retain(|_, entry| {
            let fresh = entry.loaded.elapsed() < FRESH_FOR;
            if !fresh {
                freed += entry.body.len();
            }
            fresh
        });
        self.total_bytes -= freed;
        while self.total_bytes + needed > MAX_TOTAL_BYTES {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, entry)| entry.loaded)
                .map(|(path, _)| path.clone());
            match oldest {
                Some(path) => self.remove(&path),
                None => break,
            }
        }
    }
}

/// Whether the response to `request` depends on nothing but the path: no
/// precondition and no range.
fn is_plain(request: &Parts) -> bool {
    let headers = &request.headers;
    !(headers.contains_key(header::IF_MATCH)
        || headers.contains_key(header::IF_NONE_MATCH)
        || headers.contains_key(header::IF_MODIFIED_SINCE)
        || headers.contains_key(header::IF_UNMODIFIED_SINCE)
        || headers.contains_key(header::IF_RANGE)
        || headers.contains_key(header::RANGE))
}
