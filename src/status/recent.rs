//! The last warn and error log records, kept in memory for the status
//! page: a tracing layer that copies each such event into a bounded ring.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Records kept; older ones are dropped first.
pub const CAPACITY: usize = 50;

/// Maximum length of a kept message, in bytes. A longer one is cut at a
/// character boundary.
const MAX_MESSAGE_BYTES: usize = 2048;

/// One warn or error record.
#[derive(Debug, Clone, Serialize)]
pub struct RecentRecord {
    #[serde(serialize_with = "super::serialize_time")]
    pub time: SystemTime,
    pub level: &'static str,
    /// The module that logged it, e.g. `navigator::supervisor::tenants`.
    pub target: String,
    /// The message followed by the structured fields as `key=value`.
    pub message: String,
}

static RECENT: Mutex<VecDeque<RecentRecord>> = Mutex::new(VecDeque::new());

/// Warn and error records seen since startup, including dropped ones.
static SEEN: AtomicU64 = AtomicU64::new(0);

/// Returns the kept records, oldest first.
pub fn records() -> Vec<RecentRecord> {
    let ring = RECENT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    ring.iter().cloned().collect()
}

/// Returns the number of warn and error records since startup.
pub fn seen() -> u64 {
    SEEN.load(Ordering::Relaxed)
}

/// Returns the layer that fills the ring. It receives only events that
/// pass the level filter in front of it, so with `LOG_LEVEL=error` warnings are
/// not kept.
pub fn layer() -> RecentLayer {
    RecentLayer
}

pub struct RecentLayer;

impl<S: Subscriber> Layer<S> for RecentLayer {
    fn on_event(&self, event: &Event<'_>, _context: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut text = MessageText::default();
        event.record(&mut text);
        let record = RecentRecord {
            time: SystemTime::now(),
            level: if level == Level::ERROR {
                "error"
            } else {
                "warn"
            },
            target: event.metadata().target().to_string(),
            message: text.finish(),
        };
        SEEN.fetch_add(1, Ordering::Relaxed);
        let mut ring = RECENT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(record);
    }
}

/// Collects the message and the other fields of an event as one line.
#[derive(Default)]
struct MessageText {
    message: String,
    fields: String,
}

impl MessageText {
    fn finish(self) -> String {
        let mut line = self.message;
        if !self.fields.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&self.fields);
        }
        if line.len() > MAX_MESSAGE_BYTES {
            let mut end = MAX_MESSAGE_BYTES;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
            line.push('…');
        }
        line
    }
}

impl Visit for MessageText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
            return;
        }
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{}={value:?}", field.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn keeps_warnings_and_errors_only() {
        let subscriber = tracing_subscriber::registry().with(RecentLayer);
        let marker = format!("marker-{}", fastrand::u64(..));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(id = %marker, "not kept");
            tracing::warn!(tenant = "2025/boston", id = %marker, "tenant slow");
            tracing::error!(id = %marker, error = "boom", "failed");
        });
        let mine: Vec<RecentRecord> = records()
            .into_iter()
            .filter(|record| record.message.contains(&marker))
            .collect();
        assert_eq!(mine.len(), 2, "{mine:?}");
        assert_eq!(mine[0].level, "warn");
        assert_eq!(
            mine[0].message,
            format!("tenant slow tenant=\"2025/boston\" id={marker}")
        );
        assert_eq!(mine[1].level, "error");
    }

    #[test]
    fn long_messages_cut_at_character_boundary() {
        let text = MessageText {
            message: "é".repeat(MAX_MESSAGE_BYTES),
            fields: String::new(),
        };
        let line = text.finish();
        assert!(line.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8());
        assert!(line.ends_with('…'));
    }
}
