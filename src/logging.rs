//! tracing setup: text or JSON output and the level, both switchable on
//! reload. The level comes from `logging.level`, else `LOG_LEVEL`, else
//! `RUST_LOG`, else `info`.

use std::fmt::Write as _;
use std::io::IsTerminal;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{self as tracing_fmt, FmtContext};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::schema::{LogFormat, LogLevel};

/// The tracing target of lines captured from child processes.
pub const OUTPUT_TARGET: &str = "navigator::output";

type Base = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
type BoxedLayer = Box<dyn Layer<Base> + Send + Sync>;

/// Switches the output format and the level of the installed subscriber.
pub struct LogControl {
    handle: reload::Handle<BoxedLayer, Base>,
    format: std::sync::Mutex<LogFormat>,
    filter: reload::Handle<EnvFilter, Registry>,
    /// The configured level; `None` follows the environment.
    level: std::sync::Mutex<Option<LogLevel>>,
}

impl LogControl {
    /// Sets the level from the config; `None` returns to the level the
    /// environment names.
    pub fn set_level(&self, level: Option<LogLevel>) {
        let mut current = self.level.lock().unwrap_or_else(|p| p.into_inner());
        if *current == level {
            return;
        }
        let filter = match level {
            Some(level) => EnvFilter::new(level.as_str()),
            None => filter(),
        };
        if let Err(error) = self.filter.reload(filter) {
            tracing::warn!(error = %error, "cannot switch the log level");
            return;
        }
        *current = level;
    }

    pub fn set_format(&self, format: LogFormat) {
        let mut current = self.format.lock().unwrap_or_else(|p| p.into_inner());
        if *current == format {
            return;
        }
        if let Err(error) = self.handle.reload(make_layer(format)) {
            tracing::warn!(error = %error, "cannot switch the log format");
            return;
        }
        *current = format;
    }
}

fn filter() -> EnvFilter {
    let directive = std::env::var("LOG_LEVEL")
        .ok()
        .map(|level| level.to_ascii_lowercase())
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"))
}

fn make_layer(format: LogFormat) -> BoxedLayer {
    match format {
        LogFormat::Json => tracing_fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_fmt::layer()
            .event_format(TextFormat::default())
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

/// Installs the global subscriber; call once at startup.
pub fn init(format: LogFormat) -> LogControl {
    let (filter, filter_handle) = reload::Layer::new(filter());
    let (layer, handle) = reload::Layer::new(make_layer(format));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .with(crate::log_shipping::layer())
        .try_init();
    LogControl {
        handle,
        format: std::sync::Mutex::new(format),
        filter: filter_handle,
        level: std::sync::Mutex::new(None),
    }
}

/// The default text format, except that child-process lines print as
/// `[tenant.stream] line`, the way Navigator shows them.
struct TextFormat {
    inner: format::Format<format::Full>,
}

impl Default for TextFormat {
    fn default() -> Self {
        TextFormat {
            inner: format::Format::default().with_ansi(std::io::stderr().is_terminal()),
        }
    }
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if event.metadata().target() == OUTPUT_TARGET {
            let mut line = OutputLine::default();
            event.record(&mut line);
            return writeln!(writer, "[{}.{}] {}", line.tenant, line.stream, line.message);
        }
        self.inner.format_event(ctx, writer, event)
    }
}

#[derive(Default)]
struct OutputLine {
    tenant: String,
    stream: String,
    message: String,
}

impl Visit for OutputLine {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "tenant" | "process" => self.tenant = value.to_string(),
            "stream" => self.stream = value.to_string(),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
    }
}
