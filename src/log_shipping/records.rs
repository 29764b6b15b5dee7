//! Log records as the log files and Vector receive them: one line each,
//! text or JSON.
//!
//! JSON records have the shape that Navigator (the Go program) sends to
//! Vector, so existing Vector pipelines keep working. They contain
//! `@timestamp`, `source` (the tenant or process name, or `navigator`),
//! `stream` and `message`, plus `level`, `tenant` and the event's own
//! fields. An access record carries all its fields (`status`, `uri`,
//! `duration_ms`...).

use std::fmt::Write as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};

use crate::config::schema::LogFormat;
use crate::supervisor::output::Stream;

/// `source` of navigator's own records, and the `{{app}}` of its log file.
pub const NAVIGATOR_SOURCE: &str = "navigator";

/// `stream` of access-log records.
pub const ACCESS_STREAM: &str = "access";

/// `stream` of navigator's other records.
pub const LOG_STREAM: &str = "log";

/// Keys every JSON record sets itself; event fields of the same name are
/// left out rather than overwrite them.
const RESERVED_KEYS: [&str; 6] = [
    "@timestamp",
    "level",
    "source",
    "stream",
    "message",
    "module",
];

/// Returns the current time as RFC 3339 in UTC with microseconds.
pub fn timestamp() -> String {
    let mut text = String::with_capacity(32);
    // Writing to a String cannot fail.
    let _ = SystemTime.format_time(&mut Writer::new(&mut text));
    text
}

/// A field value, kept typed so JSON gets numbers and booleans.
#[derive(Debug, Clone, PartialEq)]
enum FieldValue {
    /// Recorded as `&str`; quoted in text, as tracing's own format does.
    Text(String),
    /// Recorded through `Debug` or `Display` (`?x`, `%x`); printed as is.
    Formatted(String),
    Signed(i64),
    Unsigned(u64),
    Float(f64),
    Bool(bool),
}

impl FieldValue {
    fn to_json(&self) -> Value {
        match self {
            FieldValue::Text(text) | FieldValue::Formatted(text) => Value::String(text.clone()),
            FieldValue::Signed(number) => Value::from(*number),
            FieldValue::Unsigned(number) => Value::from(*number),
            FieldValue::Float(number) => Value::from(*number),
            FieldValue::Bool(flag) => Value::Bool(*flag),
        }
    }

    fn write_text(&self, out: &mut String) {
        let _ = match self {
            FieldValue::Text(text) => write!(out, "{text:?}"),
            FieldValue::Formatted(text) => write!(out, "{text}"),
            FieldValue::Signed(number) => write!(out, "{number}"),
            FieldValue::Unsigned(number) => write!(out, "{number}"),
            FieldValue::Float(number) => write!(out, "{number}"),
            FieldValue::Bool(flag) => write!(out, "{flag}"),
        };
    }
}

/// One of navigator's own tracing events, with its fields collected.
#[derive(Debug)]
pub struct EventRecord {
    level: Level,
    target: &'static str,
    message: String,
    fields: Vec<(&'static str, FieldValue)>,
}

impl EventRecord {
    pub fn from_event(event: &Event<'_>) -> EventRecord {
        let mut record = EventRecord {
            level: *event.metadata().level(),
            target: event.metadata().target(),
            message: String::new(),
            fields: Vec::new(),
        };
        event.record(&mut record);
        record
    }

    /// Returns `stream` of this record: `access` for access-log records.
    fn stream(&self) -> &'static str {
        if self.target == crate::access_log::TARGET {
            ACCESS_STREAM
        } else {
            LOG_STREAM
        }
    }

    fn field(&self, name: &str) -> Option<&FieldValue> {
        self.fields
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// Formats the record as one line ending in `\n`: the JSON record, or
    /// `TIME LEVEL target: message key=value...` like navigator's stderr.
    pub fn line(&self, format: LogFormat, time: &str) -> Vec<u8> {
        match format {
            LogFormat::Json => self.json_line(time),
            LogFormat::Text => {
                let mut out = String::with_capacity(128 + self.message.len());
                let _ = write!(
                    out,
                    "{time} {:>5} {}: {}",
                    self.level, self.target, self.message
                );
                for (name, value) in &self.fields {
                    let _ = write!(out, " {name}=");
                    value.write_text(&mut out);
                }
                out.push('\n');
                out.into_bytes()
            }
        }
    }

    /// Formats the record as one JSON line ending in `\n`.
    pub fn json_line(&self, time: &str) -> Vec<u8> {
        let mut map = Map::new();
        map.insert("@timestamp".into(), Value::from(time));
        map.insert("level".into(), Value::from(self.level.as_str()));
        map.insert("source".into(), Value::from(NAVIGATOR_SOURCE));
        map.insert("stream".into(), Value::from(self.stream()));
        map.insert("message".into(), Value::from(self.message.as_str()));
        map.insert("module".into(), Value::from(self.target));
        for (name, value) in &self.fields {
            if !RESERVED_KEYS.contains(name) {
                map.insert((*name).to_string(), value.to_json());
            }
        }
        // An access record without a tenant logs `tenant=-`; Vector gets no
        // key instead.
        if matches!(self.field("tenant"), Some(FieldValue::Text(text)) if text == "-") {
            map.remove("tenant");
        }
        to_line(&Value::Object(map))
    }
}

impl Visit for EventRecord {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .push((field.name(), FieldValue::Text(value.to_string())));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields
                .push((field.name(), FieldValue::Formatted(text)));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.name(), FieldValue::Signed(value)));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields
            .push((field.name(), FieldValue::Unsigned(value)));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.name(), FieldValue::Float(value)));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.name(), FieldValue::Bool(value)));
    }
}

/// Writer of a line of child output.
#[derive(Debug, Clone, Copy)]
pub enum OutputSource<'a> {
    Tenant(&'a str),
    /// A managed process, hook or other child that is not a tenant.
    Process(&'a str),
}

impl OutputSource<'_> {
    pub fn name(&self) -> &str {
        match self {
            OutputSource::Tenant(name) | OutputSource::Process(name) => name,
        }
    }
}

/// Formats one line of child output in text as `[name.stream] line`, the
/// way navigator's stderr shows it.
pub fn output_text_line(source: OutputSource<'_>, stream: Stream, text: &str) -> Vec<u8> {
    let mut out = String::with_capacity(text.len() + source.name().len() + 12);
    let _ = writeln!(out, "[{}.{}] {text}", source.name(), stream.as_str());
    out.into_bytes()
}

/// Formats one line of child output as a JSON record. A line that already
/// is a JSON log record (an object with `@timestamp` and `severity`, as
/// Rails JSON loggers write) is passed on as that object, with `source`,
/// `tenant` and `stream` added where missing.
pub fn output_json_line(
    source: OutputSource<'_>,
    stream: Stream,
    text: &str,
    time: &str,
) -> Vec<u8> {
    if text.starts_with('{') {
        if let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(text) {
            if map.contains_key("@timestamp") && map.contains_key("severity") {
                add_source(&mut map, source, stream);
                return to_line(&Value::Object(map));
            }
        }
    }

    let mut map = Map::new();
    map.insert("@timestamp".into(), Value::from(time));
    map.insert("level".into(), Value::from("INFO"));
    add_source(&mut map, source, stream);
    map.insert("message".into(), Value::from(text));
    to_line(&Value::Object(map))
}

fn add_source(map: &mut Map<String, Value>, source: OutputSource<'_>, stream: Stream) {
    map.entry("source")
        .or_insert_with(|| Value::from(source.name()));
    if let OutputSource::Tenant(name) = source {
        map.entry("tenant").or_insert_with(|| Value::from(name));
    }
    map.entry("stream")
        .or_insert_with(|| Value::from(stream.as_str()));
}

fn to_line(value: &Value) -> Vec<u8> {
    // Serializing a Value with string keys cannot fail.
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    /// Captures the records of events logged inside `body`.
    fn capture(body: impl FnOnce()) -> Vec<EventRecord> {
        struct Capture(Arc<Mutex<Vec<EventRecord>>>);
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                self.0.lock().unwrap().push(EventRecord::from_event(event));
            }
        }
        let records = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Capture(records.clone()));
        tracing::subscriber::with_default(subscriber, body);
        Arc::try_unwrap(records).unwrap().into_inner().unwrap()
    }

    #[test]
    fn event_text_line_matches_stderr_format() {
        let records = capture(|| {
            tracing::info!(tenant = "2025/boston", port = 4001u16, ready = true, status = %"exit code 3", "tenant ready");
        });
        let line = String::from_utf8(records[0].line(LogFormat::Text, "T")).unwrap();
        assert_eq!(
            line,
            "T  INFO navigator::log_shipping::records::tests: tenant ready \
             tenant=\"2025/boston\" port=4001 ready=true status=exit code 3\n"
        );
    }

    #[test]
    fn access_event_json_has_stream_and_fields() {
        let records = capture(|| {
            tracing::info!(target: crate::access_log::TARGET, status = 200u16, tenant = "-", uri = "/up", "request");
        });
        let line = records[0].line(LogFormat::Json, "2025-01-02T03:04:05.000000Z");
        assert_eq!(line.last(), Some(&b'\n'));
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["@timestamp"], "2025-01-02T03:04:05.000000Z");
        assert_eq!(value["source"], "navigator");
        assert_eq!(value["stream"], "access");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["message"], "request");
        assert_eq!(value["status"], 200);
        assert_eq!(value["uri"], "/up");
        assert!(value.get("tenant").is_none());
    }

    #[test]
    fn reserved_keys_not_overwritten() {
        let records = capture(|| {
            tracing::warn!(stream = "stdout", source = "x", "dropped");
        });
        let value: Value = serde_json::from_slice(&records[0].json_line("T")).unwrap();
        assert_eq!(value["stream"], "log");
        assert_eq!(value["source"], "navigator");
        assert_eq!(value["level"], "WARN");
    }

    #[test]
    fn output_lines_text_and_json() {
        let source = OutputSource::Tenant("2025/boston");
        assert_eq!(
            output_text_line(source, Stream::Stderr, "boom"),
            b"[2025/boston.stderr] boom\n"
        );
        let value: Value =
            serde_json::from_slice(&output_json_line(source, Stream::Stdout, "hi \"x\"", "T"))
                .unwrap();
        assert_eq!(value["source"], "2025/boston");
        assert_eq!(value["tenant"], "2025/boston");
        assert_eq!(value["stream"], "stdout");
        assert_eq!(value["message"], "hi \"x\"");

        let process: Value = serde_json::from_slice(&output_json_line(
            OutputSource::Process("redis"),
            Stream::Stdout,
            "ready",
            "T",
        ))
        .unwrap();
        assert_eq!(process["source"], "redis");
        assert!(process.get("tenant").is_none());
    }

    #[test]
    fn rails_json_line_passed_through() {
        let rails =
            r#"{"@timestamp":"2025-01-01T00:00:00Z","severity":"INFO","message":"Started GET"}"#;
        let line = output_json_line(OutputSource::Tenant("kobe"), Stream::Stdout, rails, "T");
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["@timestamp"], "2025-01-01T00:00:00Z");
        assert_eq!(value["severity"], "INFO");
        assert_eq!(value["message"], "Started GET");
        assert_eq!(value["tenant"], "kobe");
        assert!(value.get("level").is_none());

        // Other JSON is wrapped like any line.
        let line = output_json_line(
            OutputSource::Tenant("kobe"),
            Stream::Stdout,
            "{\"a\":1}",
            "T",
        );
        let value: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["message"], "{\"a\":1}");
    }

    #[test]
    fn timestamp_is_rfc3339_utc() {
        let time = timestamp();
        assert_eq!(time.len(), "2025-01-02T03:04:05.000000Z".len(), "{time}");
        assert!(time.ends_with('Z'), "{time}");
        assert_eq!(&time[10..11], "T");
    }
}
