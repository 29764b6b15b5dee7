//! Appending log lines to files (`logging.file`), one file per `{{app}}`.
//!
//! Producers hand whole lines to a bounded queue and never wait: a full
//! queue drops the line and counts it. One writer thread owns every open
//! file and appends each line with one `write` on a file opened with
//! `O_APPEND`, so lines stay whole even when another process appends to
//! the same file. A file that cannot be opened or written loses its lines,
//! and the error is logged at most once a minute per file.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 16 * 1024;

/// Shortest time between two error reports about one file, and between
/// two reports about dropped lines.
const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Time before a file that failed to open is tried again.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

/// A file not written for this long is closed; the next line reopens it.
const IDLE_CLOSE: Duration = Duration::from_secs(600);

/// The placeholder in `logging.file` replaced by the source's name.
pub const APP_PLACEHOLDER: &str = "{{app}}";

enum Command {
    Line {
        app: Arc<str>,
        line: Vec<u8>,
    },
    /// Wakes the writer to apply a new template or a reopen request.
    Wake,
    /// Acknowledged once every line queued before it is written.
    Flush(mpsc::Sender<()>),
}

/// Settings the writer reads between lines.
struct Controls {
    template: Mutex<String>,
    /// Bumped on every template change.
    template_generation: AtomicU64,
    /// Bumped on every reopen request (SIGUSR1).
    reopen_generation: AtomicU64,
    /// Lines dropped because the queue was full.
    dropped: AtomicU64,
}

/// Handle on the writer thread; dropping it ends the thread once the
/// queued lines are written.
pub struct FileWriter {
    sender: SyncSender<Command>,
    controls: Arc<Controls>,
}

impl FileWriter {
    /// Starts the writer thread for `template`, a path that may contain
    /// `{{app}}`.
    pub fn start(template: &str) -> io::Result<FileWriter> {
        let (sender, receiver) = mpsc::sync_channel(QUEUE_LINES);
        let controls = Arc::new(Controls {
            template: Mutex::new(template.to_string()),
            template_generation: AtomicU64::new(0),
            reopen_generation: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let thread_controls = Arc::clone(&controls);
        std::thread::Builder::new()
            .name("navigator-log-files".into())
            .spawn(move || {
                super::suppress_on_this_thread();
                Writer::new(thread_controls).run(receiver)
            })?;
        Ok(FileWriter { sender, controls })
    }

    /// Queues `line` (one whole line ending in `\n`) for the file of `app`.
    /// Never blocks: when the queue is full the line is dropped and counted.
    pub fn write_line(&self, app: &Arc<str>, line: Vec<u8>) {
        let command = Command::Line {
            app: Arc::clone(app),
            line,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.sender.try_send(command)
        {
            self.controls.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Makes later lines go to the paths of `template`.
    pub fn set_template(&self, template: &str) {
        let mut current = lock(&self.controls.template);
        if *current == template {
            return;
        }
        *current = template.to_string();
        drop(current);
        self.controls
            .template_generation
            .fetch_add(1, Ordering::Release);
        let _ = self.sender.try_send(Command::Wake);
    }

    /// Asks the writer to close and reopen every file, so that lines go to
    /// a new file after logrotate renamed the old one.
    pub fn reopen(&self) {
        self.controls
            .reopen_generation
            .fetch_add(1, Ordering::Release);
        // With a full queue the writer is busy and notices the request
        // before its next line anyway.
        let _ = self.sender.try_send(Command::Wake);
    }

    /// Waits up to `timeout` until every line queued so far is written;
    /// returns whether that happened. Blocks the calling thread.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (ack, done) = mpsc::channel();
        let mut command = Command::Flush(ack);
        loop {
            match self.sender.try_send(command) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(returned)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    command = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        done.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Returns the number of lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.controls.dropped.load(Ordering::Relaxed)
    }
}

/// Returns the file path of `app` for `template`: `{{app}}` becomes the
/// name with `/` replaced by `-` (tenant `2025/boston` writes
/// `2025-boston.log`), so every file sits in the template's directory.
pub fn path_for(template: &str, app: &str) -> PathBuf {
    let mut name: String = app
        .chars()
        .map(|c| if c == '/' || c == '\0' { '-' } else { c })
        .collect();
    if name.is_empty() || name == "." || name == ".." {
        name = format!("_{name}");
    }
    PathBuf::from(template.replace(APP_PLACEHOLDER, &name))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct OpenFile {
    file: Option<File>,
    /// When a failed open may be tried again.
    retry_at: Option<Instant>,
    last_write: Instant,
    /// Lines lost since the last error report.
    lost: u64,
    last_report: Option<Instant>,
}

/// The writer thread's state.
struct Writer {
    controls: Arc<Controls>,
    template: String,
    template_generation: u64,
    reopen_generation: u64,
    /// File path of each app under the current template.
    paths: HashMap<Arc<str>, PathBuf>,
    files: HashMap<PathBuf, OpenFile>,
    reported_drops: u64,
    last_drop_report: Option<Instant>,
    last_idle_sweep: Instant,
}

impl Writer {
    fn new(controls: Arc<Controls>) -> Writer {
        let template = lock(&controls.template).clone();
        Writer {
            template,
            template_generation: controls.template_generation.load(Ordering::Acquire),
            reopen_generation: controls.reopen_generation.load(Ordering::Acquire),
            controls,
            paths: HashMap::new(),
            files: HashMap::new(),
            reported_drops: 0,
            last_drop_report: None,
            last_idle_sweep: Instant::now(),
        }
    }

    fn run(mut self, receiver: mpsc::Receiver<Command>) {
        loop {
            let command = receiver.recv_timeout(Duration::from_secs(1));
            self.apply_controls();
            match command {
                Ok(Command::Line { app, line }) => self.write(&app, &line),
                Ok(Command::Flush(ack)) => {
                    let _ = ack.send(());
                }
                Ok(Command::Wake) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.report_drops();
            self.close_idle_files();
        }
    }

    fn apply_controls(&mut self) {
        let template_generation = self.controls.template_generation.load(Ordering::Acquire);
        if template_generation != self.template_generation {
            self.template_generation = template_generation;
            self.template = lock(&self.controls.template).clone();
            self.paths.clear();
            self.files.clear();
            tracing::info!(file = %self.template, "log file path changed");
        }

        let reopen_generation = self.controls.reopen_generation.load(Ordering::Acquire);
        if reopen_generation != self.reopen_generation {
            self.reopen_generation = reopen_generation;
            self.reopen_all();
        }
    }

    fn reopen_all(&mut self) {
        let mut reopened = 0;
        let mut failed = 0;
        for (path, entry) in &mut self.files {
            entry.retry_at = None;
            if entry.file.take().is_none() {
                continue;
            }
            match open_append(path) {
                Ok(file) => {
                    entry.file = Some(file);
                    reopened += 1;
                }
                Err(error) => {
                    failed += 1;
                    entry.retry_at = Some(Instant::now() + REOPEN_DELAY);
                    tracing::error!(file = %path.display(), %error, "failed to reopen log file");
                }
            }
        }
        tracing::info!(reopened, failed, "reopened log files");
    }

    fn write(&mut self, app: &Arc<str>, line: &[u8]) {
        let path = match self.paths.get(app) {
            Some(path) => path.clone(),
            None => {
                let path = path_for(&self.template, app);
                self.paths.insert(Arc::clone(app), path.clone());
                path
            }
        };
        let now = Instant::now();
        let entry = self.files.entry(path.clone()).or_insert_with(|| OpenFile {
            file: None,
            retry_at: None,
            last_write: now,
            lost: 0,
            last_report: None,
        });
        entry.last_write = now;

        if entry.file.is_none() {
            if entry.retry_at.is_some_and(|at| now < at) {
                entry.lost += 1;
                return;
            }
            match open_append(&path) {
                Ok(file) => {
                    entry.file = Some(file);
                    entry.retry_at = None;
                }
                Err(error) => {
                    entry.retry_at = Some(now + REOPEN_DELAY);
                    entry.lost += 1;
                    report_error(entry, &path, "open", &error);
                    return;
                }
            }
        }

        // One write per line for a line of normal length; write_all only
        // loops after a short write, e.g. when the disk fills mid-line.
        if let Some(file) = &mut entry.file {
            if let Err(error) = file.write_all(line) {
                entry.lost += 1;
                report_error(entry, &path, "write", &error);
            }
        }
    }

    fn report_drops(&mut self) {
        let dropped = self.controls.dropped.load(Ordering::Relaxed);
        if dropped == self.reported_drops {
            return;
        }
        if self
            .last_drop_report
            .is_some_and(|at| at.elapsed() < REPORT_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            dropped = dropped - self.reported_drops,
            dropped_total = dropped,
            "log lines dropped because the log file writer fell behind"
        );
        self.reported_drops = dropped;
        self.last_drop_report = Some(Instant::now());
    }

    fn close_idle_files(&mut self) {
        if self.last_idle_sweep.elapsed() < Duration::from_secs(60) {
            return;
        }
        self.last_idle_sweep = Instant::now();
        self.files
            .retain(|_, entry| entry.lost > 0 || entry.last_write.elapsed() < IDLE_CLOSE);
    }
}

fn open_append(path: &PathBuf) -> io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)?;
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .open(path)
}

/// Logs a failed open or write, at most once per [`REPORT_INTERVAL`] per
/// file, with the number of lines lost meanwhile.
fn report_error(entry: &mut OpenFile, path: &std::path::Path, action: &str, error: &io::Error) {
    if entry
        .last_report
        .is_some_and(|at| at.elapsed() < REPORT_INTERVAL)
    {
        return;
    }
    tracing::error!(
        file = %path.display(),
        %error,
        lines_lost = entry.lost,
        "failed to {action} log file; its lines are dropped (logged at most once a minute)"
    );
    entry.lost = 0;
    entry.last_report = Some(Instant::now());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn path_for_flattens_tenant_names() {
        assert_eq!(
            path_for("/data/log/{{app}}.log", "2025/boston/spring"),
            PathBuf::from("/data/log/2025-boston-spring.log")
        );
        assert_eq!(
            path_for("/data/log/{{app}}.log", "navigator"),
            PathBuf::from("/data/log/navigator.log")
        );
        assert_eq!(
            path_for("/data/log/all.log", "2025/boston"),
            PathBuf::from("/data/log/all.log")
        );
        assert_eq!(
            path_for("/x/{{app}}.log", ".."),
            PathBuf::from("/x/_...log")
        );
    }

    #[test]
    fn concurrent_writers_keep_lines_whole() {
        const THREADS: usize = 8;
        const LINES: usize = 1500;
        let dir = tempfile::tempdir().unwrap();
        let template = format!("{}/logs/{{{{app}}}}.log", dir.path().display());
        let writer = Arc::new(FileWriter::start(&template).unwrap());

        std::thread::scope(|scope| {
            for thread in 0..THREADS {
                let writer = Arc::clone(&writer);
                scope.spawn(move || {
                    let shared = app("shared");
                    for number in 0..LINES {
                        // Lengths up to ~6 KiB, so a torn write would show.
                        let payload = "x".repeat((number * 37 + thread * 101) % 6000);
                        let line = format!("{thread} {number} {payload} end\n");
                        writer.write_line(&shared, line.into_bytes());
                        if number % 256 == 0 {
                            // Give the writer room; the queue is bounded.
                            std::thread::yield_now();
                        }
                    }
                });
            }
        });
        assert!(writer.flush(Duration::from_secs(30)));

        let text = fs::read_to_string(dir.path().join("logs/shared.log")).unwrap();
        let mut seen = vec![vec![false; LINES]; THREADS];
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 4, "torn line: {:.80}", line);
            let thread: usize = fields[0].parse().unwrap();
            let number: usize = fields[1].parse().unwrap();
            assert_eq!(fields[2].len(), (number * 37 + thread * 101) % 6000);
            assert_eq!(fields[3], "end");
            assert!(!seen[thread][number], "line written twice");
            seen[thread][number] = true;
        }
        let written = seen.iter().flatten().filter(|s| **s).count() as u64;
        assert_eq!(written + writer.dropped(), (THREADS * LINES) as u64);
    }

    #[test]
    fn reopen_after_rename_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let template = format!("{}/{{{{app}}}}.log", dir.path().display());
        let writer = FileWriter::start(&template).unwrap();
        let tenant = app("2025/boston");
        let current = dir.path().join("2025-boston.log");
        let rotated = dir.path().join("2025-boston.log.1");

        for number in 0..100 {
            writer.write_line(&tenant, format!("line {number}\n").into_bytes());
        }
        assert!(writer.flush(Duration::from_secs(10)));
        fs::rename(&current, &rotated).unwrap();
        // Lines written between the rename and the reopen still go to the
        // renamed file, as logrotate expects.
        writer.write_line(&tenant, b"line 100\n".to_vec());
        writer.reopen();
        for number in 101..200 {
            writer.write_line(&tenant, format!("line {number}\n").into_bytes());
        }
        assert!(writer.flush(Duration::from_secs(10)));

        let numbers = |path: &PathBuf| -> Vec<u32> {
            fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|line| line["line ".len()..].parse().unwrap())
                .collect()
        };
        let old = numbers(&rotated);
        let new = numbers(&current);
        // Line 100 was queued before the reopen request, so it may land
        // in either file; every line after the request is in the new one.
        assert!(old.iter().all(|n| *n <= 100), "{old:?}");
        assert!(new.iter().all(|n| *n >= 100), "{new:?}");
        let mut all: Vec<u32> = old.into_iter().chain(new).collect();
        all.sort();
        assert_eq!(all, (0..200).collect::<Vec<u32>>());
    }

    #[test]
    fn unwritable_path_drops_lines_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where a directory should be: fails even for root.
        let blocker = dir.path().join("blocker");
        fs::write(&blocker, "").unwrap();
        let template = format!("{}/blocker/{{{{app}}}}.log", dir.path().display());
        let writer = FileWriter::start(&template).unwrap();
        let navigator = app("navigator");
        writer.write_line(&navigator, b"lost\n".to_vec());
        assert!(writer.flush(Duration::from_secs(10)));

        // The writer keeps running: a new template works at once.
        let good = format!("{}/ok/{{{{app}}}}.log", dir.path().display());
        writer.set_template(&good);
        writer.write_line(&navigator, b"kept\n".to_vec());
        assert!(writer.flush(Duration::from_secs(10)));
        assert_eq!(
            fs::read_to_string(dir.path().join("ok/navigator.log")).unwrap(),
            "kept\n"
        );
    }
}
