//! Connection workers: one single-threaded runtime per core, each serving
//! the connections handed to it from accept to close.
//!
//! On tokio's work-stealing runtime a connection's task, the upstream
//! socket it drives and the timers it arms may sit on different threads,
//! so a request costs cross-thread wake-ups and atomic reference counts.
//! Here the listener's runtime accepts and hands each connection to the
//! next worker in turn. Everything the connection does afterwards (its
//! requests, their upstream connections, their timers) stays on that
//! worker's thread. The upstream pool keeps one shard per worker for the
//! same reason.
//!
//! Without [`start`] (tests that serve in-process, tools), connections
//! run on the runtime that accepted them.

use std::cell::Cell;
use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

/// Names the worker count; `0` serves connections on the main runtime.
pub const WORKERS_VARIABLE: &str = "NAVIGATOR_WORKERS";

struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static WORKERS: OnceLock<Workers> = OnceLock::new();

thread_local! {
    /// 1-based index of the worker that runs on this thread; 0 elsewhere.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// Reads the worker count from [`WORKERS_VARIABLE`]. Without it, returns
/// one per core the process may use. Workers beyond the cores cannot run
/// at once but cost descriptors and memory, so more than four per core
/// is rejected.
pub fn configured_count() -> Result<usize, String> {
    let cores = std::thread::available_parallelism().map_or(1, |count| count.get());
    let value = match std::env::var(WORKERS_VARIABLE) {
        Ok(value) if !value.trim().is_empty() => value,
        _ => return Ok(cores),
    };
    let count: usize = value
        .trim()
        .parse()
        .map_err(|_| format!("{WORKERS_VARIABLE}={value:?} is not a number of worker threads"))?;
    let max_count = cores * 4;
    if count > max_count {
        return Err(format!(
            "{WORKERS_VARIABLE}={value:?} is more than four workers for each of the {cores} cores; use at most {max_count}"
        ));
    }
    Ok(count)
}

/// Starts `count` worker threads, each running a single-threaded runtime
/// until the process exits. Call once, before serving; `0` starts none.
pub fn start(count: usize) -> std::io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    let mut handles = Vec::with_capacity(count);
    for index in 1..=count {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(runtime.handle().clone());
        std::thread::Builder::new()
            .name(format!("navigator-worker-{index}"))
            .spawn(move || {
                INDEX.set(index);
                runtime.block_on(std::future::pending::<()>());
            })?;
    }
    if WORKERS
        .set(Workers {
            handles,
            next: AtomicUsize::new(0),
        })
        .is_err()
    {
        debug!("connection workers were already started");
    } else {
        info!(workers = count, "connection workers started");
    }
    Ok(())
}

/// Number of shards a per-worker structure needs: one per worker and one
/// for every other thread.
pub fn shard_count() -> usize {
    WORKERS.get().map_or(0, |workers| workers.handles.len()) + 1
}

/// Returns the shard of the calling thread: its worker's index, or 0.
pub fn current_shard() -> usize {
    INDEX.get()
}

/// Serves `stream` with `serve` on the next worker, or on the calling
/// runtime when no workers run. The socket moves to the worker's I/O
/// driver, so its readiness events wake that thread alone.
pub fn spawn_connection<F, Fut>(stream: TcpStream, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(workers) = WORKERS.get() else {
        tokio::spawn(serve(stream));
        return;
    };
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            warn!(error = %error, "failed to hand a connection to a worker; closing it");
            return;
        }
    };
    let index = workers.next.fetch_add(1, Ordering::Relaxed) % workers.handles.len();
    workers.handles[index].spawn(async move {
        match TcpStream::from_std(stream) {
            Ok(stream) => serve(stream).await,
            Err(error) => {
                warn!(error = %error, "failed to register a connection with a worker; closing it");
            }
        }
    });
}
