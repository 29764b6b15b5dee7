//! Capture of a child's stdout and stderr, one log record per line.
//!
//! Each stream has a reader task that only reads, splits lines and queues
//! them, and one logger task per child turns queued lines into tracing
//! events and hook calls. A child therefore never blocks on a full pipe
//! because logging is slow: when the queue holds more than the sink's
//! byte limit, the reader drops lines and the logger later reports how many.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, watch};

/// Maximum length of a line logged as one record, in bytes. A longer line is logged as
/// several records: every piece but the last ends with [`CONTINUED_MARKER`].
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Suffix of a piece of a line longer than [`MAX_LINE_BYTES`] that
/// continues in the next record.
pub const CONTINUED_MARKER: &str = " [continued]";

/// Number of stderr lines kept for failure reports.
pub const STDERR_TAIL_LINES: usize = 20;

/// Default bound of the bytes queued between the readers and the logger of
/// one child.
pub const DEFAULT_QUEUE_LIMIT_BYTES: usize = 1024 * 1024;

/// Bookkeeping bytes counted per queued line on top of its text, so that a
/// flood of empty lines is bounded too.
const QUEUED_LINE_OVERHEAD: usize = 64;

const READ_BUFFER_BYTES: usize = 64 * 1024;

/// One of a child's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Callback that receives every logged line after its tracing event, e.g.
/// to append it to a per-tenant log file. It also receives the notice about
/// dropped lines. It runs on the child's logger task, so it should not block
/// for long, because lines queue up meanwhile and may then be dropped. It
/// must not panic, because that ends the logging of this child.
pub type LineHook = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// Destination of a child's output: the label that names the child in logs
/// plus an optional [`LineHook`].
#[derive(Clone)]
pub struct OutputSink {
    label: Arc<str>,
    hook: Option<LineHook>,
    queue_limit_bytes: usize,
}

impl OutputSink {
    /// Creates a sink that logs lines with `tenant = label`.
    pub fn new(label: impl Into<Arc<str>>) -> Self {
        OutputSink {
            label: label.into(),
            hook: None,
            queue_limit_bytes: DEFAULT_QUEUE_LIMIT_BYTES,
        }
    }

    /// Adds a hook called for every line after its tracing event.
    pub fn with_hook(mut self, hook: LineHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Sets the bound of bytes queued for the logger before lines are
    /// dropped.
    pub fn with_queue_limit(mut self, bytes: usize) -> Self {
        self.queue_limit_bytes = bytes;
        self
    }

    pub fn label(&self) -> &str {
        &self.label
    }
}

impl fmt::Debug for OutputSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputSink")
            .field("label", &self.label)
            .field("hook", &self.hook.is_some())
            .field("queue_limit_bytes", &self.queue_limit_bytes)
            .finish()
    }
}

enum Record {
    Line { stream: Stream, text: String },
    Dropped { stream: Stream, count: u64 },
}

/// State shared by the reader tasks of one child.
struct Shared {
    sink: OutputSink,
    stderr_tail: Mutex<VecDeque<String>>,
    queued_bytes: AtomicUsize,
    /// Number of reader tasks that reached end of file or failed.
    finished_readers: watch::Sender<usize>,
}

/// Handle on the output capture of one child.
pub struct OutputCapture {
    shared: Arc<Shared>,
    readers: usize,
}

impl OutputCapture {
    /// Returns up to [`STDERR_TAIL_LINES`] last stderr lines, oldest first.
    pub fn stderr_tail(&self) -> Vec<String> {
        let tail = self
            .shared
            .stderr_tail
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tail.iter().cloned().collect()
    }

    /// Waits until every stream reached end of file, or until `limit`
    /// passed, and returns whether they all did. A stream stays open after
    /// the child exits while a grandchild keeps the pipe open.
    pub async fn drained(&self, limit: Duration) -> bool {
        let mut finished = self.shared.finished_readers.subscribe();
        let readers = self.readers;
        let all_finished = finished.wait_for(|count| *count >= readers);
        matches!(tokio::time::timeout(limit, all_finished).await, Ok(Ok(_)))
    }
}

/// Starts reading `stdout` and `stderr` on the current tokio runtime.
///
/// # Panics
/// Panics when called outside a tokio runtime, like `tokio::spawn`.
pub fn capture<O, E>(sink: OutputSink, stdout: Option<O>, stderr: Option<E>) -> OutputCapture
where
    O: AsyncRead + Unpin + Send + 'static,
    E: AsyncRead + Unpin + Send + 'static,
{
    let (finished_readers, _) = watch::channel(0);
    let shared = Arc::new(Shared {
        sink,
        stderr_tail: Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)),
        queued_bytes: AtomicUsize::new(0),
        finished_readers,
    });
    let (records, receiver) = mpsc::unbounded_channel();

    let mut readers = 0;
    if let Some(stdout) = stdout {
        readers += 1;
        let reader = StreamReader::new(Stream::Stdout, Arc::clone(&shared), records.clone());
        tokio::spawn(reader.run(stdout));
    }
    if let Some(stderr) = stderr {
        readers += 1;
        let reader = StreamReader::new(Stream::Stderr, Arc::clone(&shared), records.clone());
        tokio::spawn(reader.run(stderr));
    }
    // The logger ends when both readers have dropped their senders.
    drop(records);
    tokio::spawn(log_records(Arc::clone(&shared), receiver));

    OutputCapture { shared, readers }
}

async fn log_records(shared: Arc<Shared>, mut receiver: mpsc::UnboundedReceiver<Record>) {
    let label = &*shared.sink.label;
    while let Some(record) = receiver.recv().await {
        match record {
            Record::Line { stream, text } => {
                tracing::info!(target: crate::logging::OUTPUT_TARGET, tenant = label, stream = stream.as_str(), "{text}");
                if let Some(hook) = &shared.sink.hook {
                    hook(stream, &text);
                }
                shared
                    .queued_bytes
                    .fetch_sub(queued_cost(&text), Ordering::AcqRel);
            }
            Record::Dropped { stream, count } => {
                let notice = format!("{count} lines dropped because logging fell behind");
                tracing::warn!(
                    tenant = label,
                    stream = stream.as_str(),
                    dropped = count,
                    "{notice}"
                );
                if let Some(hook) = &shared.sink.hook {
                    hook(stream, &notice);
                }
            }
        }
    }
}

fn queued_cost(text: &str) -> usize {
    text.len() + QUEUED_LINE_OVERHEAD
}

struct StreamReader {
    stream: Stream,
    shared: Arc<Shared>,
    records: mpsc::UnboundedSender<Record>,
    /// Lines dropped since the last queued record.
    dropped: u64,
}

impl StreamReader {
    fn new(stream: Stream, shared: Arc<Shared>, records: mpsc::UnboundedSender<Record>) -> Self {
        StreamReader {
            stream,
            shared,
            records,
            dropped: 0,
        }
    }

    async fn run<R: AsyncRead + Unpin>(mut self, input: R) {
        if let Err(error) = split_lines(input, |piece, continues| self.emit(piece, continues)).await
        {
            tracing::warn!(
                tenant = &*self.shared.sink.label,
                stream = self.stream.as_str(),
                %error,
                "failed to read child output; the rest of this stream is lost"
            );
        }
        if self.dropped > 0 {
            let _ = self.records.send(Record::Dropped {
                stream: self.stream,
                count: self.dropped,
            });
        }
        self.shared
            .finished_readers
            .send_modify(|count| *count += 1);
    }

    fn emit(&mut self, piece: &[u8], continues: bool) {
        let mut text = String::from_utf8_lossy(piece).into_owned();
        if continues {
            text.push_str(CONTINUED_MARKER);
        }

        if self.stream == Stream::Stderr {
            let mut tail = self
                .shared
                .stderr_tail
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(text.clone());
        }

        let cost = queued_cost(&text);
        let queued = self.shared.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        if queued + cost > self.shared.sink.queue_limit_bytes {
            self.shared.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
            self.dropped += 1;
            return;
        }
        if self.dropped > 0 {
            let count = std::mem::take(&mut self.dropped);
            let _ = self.records.send(Record::Dropped {
                stream: self.stream,
                count,
            });
        }
        let line = Record::Line {
            stream: self.stream,
            text,
        };
        // A send fails only when the logger task has ended, because the
        // runtime shuts down or the hook panicked. The line is then lost.
        if self.records.send(line).is_err() {
            self.shared.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
        }
    }
}

/// Reads `input` to the end and calls `emit(piece, continues)` for every
/// line without its `\n` or `\r\n`. A line longer than [`MAX_LINE_BYTES`]
/// arrives as several pieces, split at UTF-8 character boundaries, where
/// every piece but the last has `continues == true`. A last line without a
/// newline is emitted too.
async fn split_lines<R, F>(input: R, mut emit: F) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    F: FnMut(&[u8], bool),
{
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, input);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            if !line.is_empty() {
                emit(trim_carriage_return(&line), false);
            }
            return Ok(());
        }

        let newline = buffer.iter().position(|&byte| byte == b'\n');
        let (content, consumed) = match newline {
            Some(index) => (&buffer[..index], index + 1),
            None => (buffer, buffer.len()),
        };
        line.extend_from_slice(content);
        while line.len() > MAX_LINE_BYTES {
            let split = utf8_split_point(&line, MAX_LINE_BYTES);
            emit(&line[..split], true);
            line.drain(..split);
        }
        if newline.is_some() {
            emit(trim_carriage_return(&line), false);
            line.clear();
        }
        reader.consume(consumed);
    }
}

fn trim_carriage_return(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Returns the largest index `<= max` that does not split a UTF-8 sequence,
/// or `max` when the bytes there are not UTF-8 anyway.
fn utf8_split_point(bytes: &[u8], max: usize) -> usize {
    let is_continuation = |index: usize| bytes.get(index).is_some_and(|b| b & 0xC0 == 0x80);
    // A UTF-8 character has at most three continuation bytes.
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|&index| !is_continuation(index))
        .filter(|&index| index > 0)
        .unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pieces_of(input: &[u8]) -> Vec<(String, bool)> {
        let mut pieces = Vec::new();
        split_lines(input, |piece, continues| {
            pieces.push((String::from_utf8(piece.to_vec()).unwrap(), continues));
        })
        .await
        .unwrap();
        pieces
    }

    #[tokio::test]
    async fn split_lines_handles_endings() {
        let pieces = pieces_of(b"one\r\ntwo\n\nlast").await;
        assert_eq!(
            pieces,
            vec![
                ("one".to_string(), false),
                ("two".to_string(), false),
                (String::new(), false),
                ("last".to_string(), false),
            ]
        );
    }

    #[tokio::test]
    async fn split_lines_caps_long_line() {
        let mut input = vec![b'x'; 2 * MAX_LINE_BYTES + 100];
        input.extend_from_slice(b"\nshort\n");
        let pieces = pieces_of(&input).await;
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[0].0.len(), MAX_LINE_BYTES);
        assert!(pieces[0].1);
        assert_eq!(pieces[1].0.len(), MAX_LINE_BYTES);
        assert!(pieces[1].1);
        assert_eq!(pieces[2], ("x".repeat(100), false));
        assert_eq!(pieces[3], ("short".to_string(), false));
    }

    #[tokio::test]
    async fn split_lines_keeps_exact_cap_whole() {
        let mut input = vec![b'y'; MAX_LINE_BYTES];
        input.push(b'\n');
        let pieces = pieces_of(&input).await;
        assert_eq!(pieces, vec![("y".repeat(MAX_LINE_BYTES), false)]);
    }

    #[tokio::test]
    async fn split_lines_respects_utf8_boundaries() {
        // One ASCII byte first so that the cap falls inside a two-byte "é".
        let line = format!("a{}", "é".repeat(MAX_LINE_BYTES));
        let pieces = pieces_of(format!("{line}\n").as_bytes()).await;
        // pieces_of fails on invalid UTF-8, so every piece is whole.
        let joined: String = pieces.iter().map(|(text, _)| text.as_str()).collect();
        assert_eq!(joined, line);
        assert!(pieces.iter().all(|(text, _)| text.len() <= MAX_LINE_BYTES));
        assert_eq!(pieces.iter().filter(|(_, continues)| !continues).count(), 1);
    }

    #[test]
    fn utf8_split_point_cases() {
        assert_eq!(utf8_split_point(b"abcdef", 4), 4);
        // "aé" is 61 C3 A9: index 2 is the continuation byte A9.
        assert_eq!(utf8_split_point("aéb".as_bytes(), 2), 1);
        // Invalid input made only of continuation bytes splits at the cap.
        assert_eq!(utf8_split_point(&[0x80; 8], 4), 4);
    }

    type Collected = Arc<Mutex<Vec<(Stream, String)>>>;

    /// Collects hook calls for assertions.
    fn collecting_sink(label: &str) -> (OutputSink, Collected) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let hook_lines = Arc::clone(&lines);
        let sink = OutputSink::new(label).with_hook(Arc::new(move |stream, text: &str| {
            hook_lines.lock().unwrap().push((stream, text.to_string()));
        }));
        (sink, lines)
    }

    async fn wait_for_lines(lines: &Mutex<Vec<(Stream, String)>>, count: usize) {
        for _ in 0..500 {
            if lines.lock().unwrap().len() >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "expected {count} lines, got {}",
            lines.lock().unwrap().len()
        );
    }

    #[tokio::test]
    async fn capture_labels_streams_and_tail() {
        let (sink, lines) = collecting_sink("2025/boston");
        let stderr: Vec<u8> = (1..=30)
            .flat_map(|i| format!("err{i}\n").into_bytes())
            .collect();
        let output = capture(
            sink,
            Some(&b"out\n"[..]),
            Some(std::io::Cursor::new(stderr)),
        );

        assert!(output.drained(Duration::from_secs(10)).await);
        let expected_tail: Vec<String> = (11..=30).map(|i| format!("err{i}")).collect();
        assert_eq!(output.stderr_tail(), expected_tail);

        wait_for_lines(&lines, 31).await;
        let lines = lines.lock().unwrap();
        assert!(lines.contains(&(Stream::Stdout, "out".to_string())));
        assert!(lines.contains(&(Stream::Stderr, "err1".to_string())));
    }

    #[tokio::test]
    async fn capture_reports_dropped_lines() {
        let (sink, lines) = collecting_sink("flood");
        // A limit below one line's cost drops every line.
        let sink = sink.with_queue_limit(1);
        let stdout = std::io::Cursor::new(b"a\nb\nc\n".to_vec());
        let output = capture(sink, Some(stdout), None::<&[u8]>);

        assert!(output.drained(Duration::from_secs(10)).await);
        wait_for_lines(&lines, 1).await;
        let lines = lines.lock().unwrap();
        assert_eq!(
            *lines,
            vec![(
                Stream::Stdout,
                "3 lines dropped because logging fell behind".to_string()
            )]
        );
    }
}
