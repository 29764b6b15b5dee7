//! Log destinations besides stderr, configured by `[logging]`: files
//! (`logging.file`, one per `{{app}}`) and Vector (`logging.vector`).
//!
//! Two kinds of lines reach them:
//! - navigator's own tracing events, including the access log, through
//!   [`ShippingLayer`]; they follow `LOG_LEVEL` like stderr does and go to
//!   the file whose `{{app}}` is `navigator`;
//! - child output, through the [`LineHook`] of each child's output sink
//!   ([`tenant_output_hook`], [`process_output_hook`]). Every line goes to
//!   the file whose `{{app}}` is the tenant or process name, whatever the
//!   log level.
//!
//! Nothing here blocks the caller: lines are formatted in place and handed
//! to bounded queues that drop (and count) when full. Events about the
//! shipping itself go to stderr only, so a failing file or socket cannot
//! feed itself.

pub mod files;
pub mod records;
pub mod vector;

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

use crate::config::schema::{LogFormat, Logging};
use crate::supervisor::output::{LineHook, Stream};
use files::FileWriter;
use records::{EventRecord, NAVIGATOR_SOURCE, OutputSource};
use vector::{VectorSender, VectorShipping};

/// Socket Vector listens on when `logging.vector.socket` is not set; the
/// path Showcase's Vector config uses.
pub const DEFAULT_VECTOR_SOCKET: &str = "/tmp/navigator-vector.sock";

/// Time `shutdown` gives queued file lines to reach their files.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The destinations of the current config, read on every log line.
struct Outputs {
    format: LogFormat,
    files: Option<Arc<FileWriter>>,
    vector: Option<VectorSender>,
}

static OUTPUTS: ArcSwapOption<Outputs> = ArcSwapOption::const_empty();

/// Destinations started by `configure`, kept to compare with the next
/// config.
#[derive(Default)]
struct Running {
    files: Option<Arc<FileWriter>>,
    vector: Option<(VectorSettings, VectorShipping)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct VectorSettings {
    socket: PathBuf,
    config: Option<PathBuf>,
}

fn running() -> &'static Mutex<Running> {
    static RUNNING: OnceLock<Mutex<Running>> = OnceLock::new();
    RUNNING.get_or_init(Mutex::default)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

thread_local! {
    static SUPPRESSED: Cell<bool> = const { Cell::new(false) };
}

/// Keeps events logged on the current thread out of files and Vector; for
/// the threads that write them.
fn suppress_on_this_thread() {
    SUPPRESSED.with(|suppressed| suppressed.set(true));
}

/// Runs `log` with events kept out of files and Vector; for events about
/// the shipping, logged from async tasks.
fn without_shipping(log: impl FnOnce()) {
    let before = SUPPRESSED.with(|suppressed| suppressed.replace(true));
    log();
    SUPPRESSED.with(|suppressed| suppressed.set(before));
}

/// Applies `[logging]` (at startup and on every reload): opens the file
/// writer for `file`, starts, restarts or stops the Vector client and
/// process when `vector` changed. Must be called inside a tokio runtime.
pub fn configure(logging: &Logging) {
    let mut running = lock(running());

    match (&logging.file, &running.files) {
        (Some(template), Some(writer)) => writer.set_template(template),
        (Some(template), None) => match FileWriter::start(template) {
            Ok(writer) => {
                tracing::info!(file = %template, "writing logs to files");
                running.files = Some(Arc::new(writer));
            }
            Err(error) => {
                tracing::error!(file = %template, %error, "failed to start the log file writer; logs go to stderr only")
            }
        },
        (None, _) => running.files = None,
    }

    let requested = logging.vector.enabled.then(|| VectorSettings {
        socket: logging
            .vector
            .socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_VECTOR_SOCKET)),
        config: logging.vector.config.clone(),
    });
    let current = running.vector.as_ref().map(|(settings, _)| settings);
    if requested.as_ref() != current {
        // Dropping the old shipping stops its tasks and its Vector process.
        running.vector = None;
        if let Some(settings) = requested {
            if tokio::runtime::Handle::try_current().is_err() {
                tracing::error!("logging.vector needs the async runtime; records are not shipped");
            } else {
                tracing::info!(
                    socket = %settings.socket.display(),
                    config = %settings.config.as_ref().map_or("-".to_string(), |c| c.display().to_string()),
                    "shipping logs to Vector"
                );
                let shipping =
                    VectorShipping::start(settings.socket.clone(), settings.config.clone());
                running.vector = Some((settings, shipping));
            }
        }
    }

    let outputs = Outputs {
        format: logging.format,
        files: running.files.clone(),
        vector: running
            .vector
            .as_ref()
            .map(|(_, shipping)| shipping.sender.clone()),
    };
    let active = outputs.files.is_some() || outputs.vector.is_some();
    OUTPUTS.store(active.then(|| Arc::new(outputs)));
}

/// Reopens every log file (SIGUSR1), for logrotate: after it renames a
/// file, new lines go to a new file at the configured path.
pub fn reopen() {
    let files = lock(running()).files.clone();
    match files {
        Some(writer) => {
            tracing::info!("reopening log files");
            writer.reopen();
        }
        None => tracing::info!("no log files to reopen (logging.file is not set)"),
    }
}

/// Writes what is queued for the files, then stops the Vector client and
/// process. Called last at shutdown, after the tenants stopped.
pub async fn shutdown() {
    OUTPUTS.store(None);
    let (files, vector) = {
        let mut running = lock(running());
        (running.files.take(), running.vector.take())
    };
    if let Some(writer) = files {
        let flushed = tokio::task::spawn_blocking(move || writer.flush(FLUSH_TIMEOUT)).await;
        if !matches!(flushed, Ok(true)) {
            tracing::warn!("log lines still queued for files at shutdown are lost");
        }
    }
    if let Some((_, shipping)) = vector {
        shipping.shutdown().await;
    }
}

/// Returns the tracing layer that sends navigator's own events to the
/// configured files and Vector.
pub fn layer() -> ShippingLayer {
    ShippingLayer
}

/// See the module documentation.
pub struct ShippingLayer;

impl<S: Subscriber> Layer<S> for ShippingLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        // Child output arrives through the output hooks instead.
        if event.metadata().target() == crate::logging::OUTPUT_TARGET {
            return;
        }
        if SUPPRESSED.with(Cell::get) {
            return;
        }
        let outputs = OUTPUTS.load();
        let Some(outputs) = outputs.as_ref() else {
            return;
        };

        let record = EventRecord::from_event(event);
        let time = records::timestamp();
        if let Some(files) = &outputs.files {
            files.write_line(navigator_app(), record.line(outputs.format, &time));
        }
        if let Some(vector) = &outputs.vector {
            vector.send(record.json_line(&time));
        }
    }
}

fn navigator_app() -> &'static Arc<str> {
    static NAVIGATOR: OnceLock<Arc<str>> = OnceLock::new();
    NAVIGATOR.get_or_init(|| Arc::from(NAVIGATOR_SOURCE))
}

/// Returns the hook that ships a tenant's output lines: to the file whose
/// `{{app}}` is the tenant name, and to Vector with `tenant` and `stream`.
pub fn tenant_output_hook(tenant: &str) -> LineHook {
    let name: Arc<str> = Arc::from(tenant);
    Arc::new(move |stream, text: &str| {
        ship_output(&name, OutputSource::Tenant(&name), stream, text)
    })
}

/// Returns the hook that ships the output of a child that is not a tenant
/// (a managed process, a hook, a CGI script) under `label`.
pub fn process_output_hook(label: &str) -> LineHook {
    let name: Arc<str> = Arc::from(label);
    Arc::new(move |stream, text: &str| {
        ship_output(&name, OutputSource::Process(&name), stream, text)
    })
}

fn ship_output(app: &Arc<str>, source: OutputSource<'_>, stream: Stream, text: &str) {
    let outputs = OUTPUTS.load();
    let Some(outputs) = outputs.as_ref() else {
        return;
    };
    let needs_time = outputs.vector.is_some() || outputs.format == LogFormat::Json;
    let time = if needs_time {
        records::timestamp()
    } else {
        String::new()
    };
    if let Some(files) = &outputs.files {
        let line = match outputs.format {
            LogFormat::Text => records::output_text_line(source, stream, text),
            LogFormat::Json => records::output_json_line(source, stream, text, &time),
        };
        files.write_line(app, line);
    }
    if let Some(vector) = &outputs.vector {
        vector.send(records::output_json_line(source, stream, text, &time));
    }
}
