//! Shipping log records to Vector (`logging.vector`): newline-delimited
//! JSON over a unix stream socket, and Vector itself run as a supervised
//! child process.
//!
//! Records go through a bounded queue to one client task. While the socket
//! is connected, the task writes every record. While it is not (Vector
//! down or restarting), records are dropped and counted, and the task
//! reconnects with backoff. Serving never waits for Vector.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, watch};

use super::without_shipping;
use crate::supervisor::output::OutputSink;
use crate::supervisor::process::{self, SpawnSpec};

/// Records queued for the socket before new ones are dropped.
const QUEUE_RECORDS: usize = 8 * 1024;

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Shortest time between two reports about dropped records or failed
/// connects.
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Restart delays of the Vector process: 1 s doubling up to a minute,
/// back to 1 s after a minute of uptime.
const RESTART_MAX: Duration = Duration::from_secs(60);
const STABLE_UPTIME: Duration = Duration::from_secs(60);

/// Time Vector gets to flush and exit at shutdown before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The producer side of the queue, cloned into every log path.
#[derive(Clone)]
pub struct VectorSender {
    queue: mpsc::Sender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl VectorSender {
    /// Queues one JSON line; never blocks. A full queue drops it.
    pub fn send(&self, line: Vec<u8>) {
        if self.queue.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The running client task and, with `logging.vector.config`, the
/// supervised Vector process. Dropping it stops both.
pub struct VectorShipping {
    pub sender: VectorSender,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl VectorShipping {
    /// Starts the client for `socket` and, when `config` is set, Vector
    /// with `vector --config <config>`. Must be called inside a tokio
    /// runtime.
    pub fn start(socket: PathBuf, config: Option<PathBuf>) -> VectorShipping {
        let (queue, receiver) = mpsc::channel(QUEUE_RECORDS);
        let dropped = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);

        let mut tasks = Vec::new();
        // NOTE: Vector is supervised by its own small restart loop here. It
        // belongs with the other managed processes once that module exists.
        if let Some(config) = config {
            tasks.push(tokio::spawn(run_vector(config, stopped.clone())));
        }
        let client = Client {
            socket,
            queue: receiver,
            dropped: Arc::clone(&dropped),
            stop: stopped,
            reported_drops: 0,
            last_drop_report: None,
        };
        tasks.push(tokio::spawn(client.run()));

        VectorShipping {
            sender: VectorSender { queue, dropped },
            stop,
            tasks,
        }
    }

    /// Stops the client after it wrote what is queued, and stops Vector
    /// (SIGTERM, then SIGKILL after 5 s). Waits for both.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for VectorShipping {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

struct Client {
    socket: PathBuf,
    queue: mpsc::Receiver<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    stop: watch::Receiver<bool>,
    reported_drops: u64,
    last_drop_report: Option<Instant>,
}

enum Ended {
    Stopped,
    Disconnected(std::io::Error),
}

impl Client {
    async fn run(mut self) {
        let mut backoff = RECONNECT_MIN;
        let mut last_connect_error: Option<Instant> = None;
        loop {
            if *self.stop.borrow() {
                return;
            }
            match UnixStream::connect(&self.socket).await {
                Ok(stream) => {
                    backoff = RECONNECT_MIN;
                    last_connect_error = None;
                    let dropped = self.dropped.load(Ordering::Relaxed);
                    without_shipping(|| {
                        tracing::info!(socket = %self.socket.display(), dropped_total = dropped,
                            "connected to the Vector socket")
                    });
                    match self.forward(stream).await {
                        Ended::Stopped => return,
                        Ended::Disconnected(error) => without_shipping(|| {
                            tracing::warn!(socket = %self.socket.display(), %error,
                                "lost the Vector socket; reconnecting")
                        }),
                    }
                }
                Err(error) => {
                    if last_connect_error.is_none_or(|at| at.elapsed() >= REPORT_INTERVAL) {
                        last_connect_error = Some(Instant::now());
                        without_shipping(|| {
                            tracing::warn!(socket = %self.socket.display(), %error,
                                "cannot connect to the Vector socket; records are dropped until it accepts")
                        });
                    }
                }
            }

            if self.wait_dropping(backoff).await {
                return;
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    /// Writes queued records to `stream` until it fails or the client is
    /// stopped. Each record is written whole before the next one.
    async fn forward(&mut self, stream: UnixStream) -> Ended {
        let (mut reader, writer) = stream.into_split();
        let mut writer = BufWriter::new(writer);
        let mut scratch = [0u8; 256];
        loop {
            tokio::select! {
                record = self.queue.recv() => {
                    let Some(record) = record else {
                        let _ = writer.flush().await;
                        return Ended::Stopped;
                    };
                    if let Err(error) = self.write_batch(&mut writer, record).await {
                        return Ended::Disconnected(error);
                    }
                }
                // Vector never writes; a read returning means it closed
                // the connection (or sent something, which is ignored).
                read = reader.read(&mut scratch) => {
                    match read {
                        Ok(0) => return Ended::Disconnected(std::io::ErrorKind::UnexpectedEof.into()),
                        Ok(_) => {}
                        Err(error) => return Ended::Disconnected(error),
                    }
                }
                _ = self.stop.changed() => {
                    // Write what is already queued, without waiting for more.
                    while let Ok(record) = self.queue.try_recv() {
                        if writer.write_all(&record).await.is_err() {
                            break;
                        }
                    }
                    let _ = writer.flush().await;
                    return Ended::Stopped;
                }
            }
            self.report_drops();
        }
    }

    /// Writes `first` and whatever else is queued, then flushes. A record
    /// that fails is counted as dropped.
    async fn write_batch(
        &mut self,
        writer: &mut BufWriter<OwnedWriteHalf>,
        first: Vec<u8>,
    ) -> std::io::Result<()> {
        let mut record = first;
        loop {
            if let Err(error) = writer.write_all(&record).await {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(error);
            }
            match self.queue.try_recv() {
                Ok(next) => record = next,
                Err(_) => break,
            }
        }
        writer.flush().await
    }

    /// Drops and counts records for `delay`; returns true when the client
    /// was stopped meanwhile.
    async fn wait_dropping(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                record = self.queue.recv() => {
                    if record.is_none() {
                        return true;
                    }
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                _ = self.stop.changed() => return true,
            }
        }
        self.report_drops();
        false
    }

    fn report_drops(&mut self) {
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped == self.reported_drops
            || self
                .last_drop_report
                .is_some_and(|at| at.elapsed() < REPORT_INTERVAL)
        {
            return;
        }
        without_shipping(|| {
            tracing::warn!(
                dropped = dropped - self.reported_drops,
                dropped_total = dropped,
                socket = %self.socket.display(),
                "log records for Vector dropped (logged at most every 10 s)"
            )
        });
        self.reported_drops = dropped;
        self.last_drop_report = Some(Instant::now());
    }
}

/// Runs `vector --config <config>` until stopped, restarting it with
/// backoff when it exits. A missing `vector` program is logged once and
/// not retried: records are then dropped unless another Vector listens.
async fn run_vector(config: PathBuf, mut stop: watch::Receiver<bool>) {
    let spec = SpawnSpec {
        label: "vector".into(),
        program: "vector".into(),
        args: vec!["--config".into(), config.display().to_string()],
        ..SpawnSpec::default()
    };
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        // Vector's own output is logged but never shipped to itself.
        match process::spawn(&spec, OutputSink::new("vector")) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                without_shipping(|| {
                    tracing::error!(
                        %error,
                        config = %config.display(),
                        "failed to start Vector: the `vector` program is not installed or not \
                         in PATH; install it or set logging.vector.enabled = false"
                    )
                });
                return;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                without_shipping(|| tracing::error!(%error, "failed to start Vector"));
            }
            Ok(mut child) => {
                let started = Instant::now();
                tokio::select! {
                    status = child.wait() => {
                        let status = match status {
                            Ok(status) => process::describe_status(status),
                            Err(error) => format!("wait failed: {error}"),
                        };
                        if started.elapsed() >= STABLE_UPTIME {
                            failures = 0;
                        }
                        failures = failures.saturating_add(1);
                        without_shipping(|| tracing::warn!(pid = child.pid(), %status,
                            stderr = ?child.stderr_tail(), "Vector exited; restarting it"));
                    }
                    _ = stop.changed() => {
                        let _ = child.stop(STOP_GRACE).await;
                        return;
                    }
                }
            }
        }

        let delay = restart_delay(failures);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

fn restart_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(6);
    (Duration::from_secs(1) * 2u32.pow(exponent)).min(RESTART_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::UnixListener;

    async fn next_line(lines: &mut tokio::io::Lines<tokio::io::BufReader<UnixStream>>) -> String {
        tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a record within 10 s")
            .unwrap()
            .expect("an open connection")
    }

    #[tokio::test]
    async fn records_arrive_and_resume_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vector.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let shipping = VectorShipping::start(socket.clone(), None);

        let (stream, _) = listener.accept().await.unwrap();
        let mut lines = tokio::io::BufReader::new(stream).lines();
        shipping.sender.send(b"{\"n\":1}\n".to_vec());
        assert_eq!(next_line(&mut lines).await, "{\"n\":1}");

        // Vector goes away: records are dropped and counted.
        drop(lines);
        drop(listener);
        std::fs::remove_file(&socket).unwrap();
        let dropped = &shipping.sender.dropped;
        for _ in 0..500 {
            shipping.sender.send(b"{\"lost\":true}\n".to_vec());
            if dropped.load(Ordering::Relaxed) >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(dropped.load(Ordering::Relaxed) >= 3);

        // Vector comes back: the client reconnects and records flow again.
        let listener = UnixListener::bind(&socket).unwrap();
        let (stream, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .unwrap()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(stream).lines();
        shipping.sender.send(b"{\"n\":2}\n".to_vec());
        let mut line = next_line(&mut lines).await;
        // Records sent while the connect was in progress may arrive first.
        while line == "{\"lost\":true}" {
            line = next_line(&mut lines).await;
        }
        assert_eq!(line, "{\"n\":2}");
        shipping.shutdown().await;
    }

    #[test]
    fn restart_delay_doubles_to_a_minute() {
        let delays: Vec<u64> = (1..=9).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
