//! One cable connection: a reader loop that handles the client's commands
//! and an idle deadline, and a writer task that drains the connection's
//! queue and sends the periodic pings.
//!
//! Per-connection state is kept small so that thousands of idle
//! connections stay cheap: a 1 KiB read buffer, no write buffering, one
//! queue of pointers and two tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::debug;

use super::{Hub, Outgoing, Subscriber};

/// Size of each connection's read buffer, allocated up front. Client
/// commands are tens of bytes; a larger frame grows the buffer and is read
/// in pieces of this size.
const READ_BUFFER: usize = 1024;

/// Streams one connection may subscribe to at once.
const MAX_SUBSCRIPTIONS: usize = 256;

/// Longest accepted stream name, in bytes.
const MAX_STREAM_NAME: usize = 2048;

/// Messages the writer sends before it flushes the socket.
const WRITE_BATCH: usize = 32;

/// How long the writer may take to send the close frame before the
/// connection is dropped without it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long unread client bytes are drained after the close frame, so the
/// kernel sends FIN rather than a reset that could discard the frame.
const LINGER: Duration = Duration::from_secs(1);

const PING: Utf8Bytes = Utf8Bytes::from_static(r#"{"type":"ping"}"#);

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// A client command as sent. Fields other than these are ignored.
#[derive(Debug, Deserialize)]
struct RawCommand {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    stream: Option<String>,
}

/// A client command, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Pong,
    /// A command type this server does not know; ignored.
    Unknown(String),
}

/// Parses the text of one client frame. An error is a protocol violation
/// that closes the connection, with the reason for the close frame.
pub fn parse_command(text: &str) -> Result<Command, &'static str> {
    let raw: RawCommand = serde_json::from_str(text).map_err(|_| "invalid JSON command")?;
    match raw.kind.as_str() {
        "subscribe" => valid_stream(raw.stream).map(Command::Subscribe),
        "unsubscribe" => valid_stream(raw.stream).map(Command::Unsubscribe),
        "pong" => Ok(Command::Pong),
        _ => Ok(Command::Unknown(raw.kind)),
    }
}

/// The reason the reader loop ended.
#[derive(Debug)]
enum Ending {
    /// Send this close frame, then close.
    Close(CloseCode, &'static str),
    /// The client closed or the socket failed: just finish.
    Quiet,
    /// The writer task has already ended.
    WriterGone,
}

/// Serves one upgraded connection until either side closes.
pub(super) async fn serve<S>(hub: Arc<Hub>, socket: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = hub.settings().clone();
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_frame_size(Some(settings.max_frame))
        .max_message_size(Some(settings.max_frame));
    let socket = WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
    let (sink, mut stream) = socket.split();

    let registration = hub.register(peer);
    let id = registration.stats.id;
    let (queue, outgoing) = mpsc::channel(settings.send_queue);
    let subscriber = Subscriber {
        queue,
        stats: registration.stats.clone(),
    };
    let (close_sender, close_receiver) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(
        sink,
        outgoing,
        close_receiver,
        settings.ping_interval,
    ));
    debug!(connection = id, %peer, "cable connection opened");

    let mut reader = Reader {
        hub: &hub,
        subscriber: &subscriber,
        subscriptions: Vec::new(),
    };
    let ending = reader
        .run(&mut stream, &mut writer, settings.idle_timeout)
        .await;
    let subscriptions = std::mem::take(&mut reader.subscriptions);
    for stream_name in &subscriptions {
        hub.unsubscribe(stream_name, id);
    }
    debug!(connection = id, %peer, ending = ?ending, "cable connection closing");

    // The close instruction goes out before the last queue sender is
    // dropped: a closed queue alone ends the writer without a close frame.

    let sink = match ending {
        Ending::WriterGone => None,
        Ending::Close(code, reason) => {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            let _ = close_sender.send(Some(frame));
            finish_writer(writer, id).await
        }
        Ending::Quiet => {
            let _ = close_sender.send(None);
            finish_writer(writer, id).await
        }
    };
    drop(subscriber);
    if let Some(sink) = sink {
        if let Ok(socket) = sink.reunite(stream) {
            linger(socket).await;
        }
    }
    drop(registration);
}

/// Waits for the writer to send its close frame, and gives up after
/// [`CLOSE_TIMEOUT`] when the client does not read.
async fn finish_writer<S>(mut writer: JoinHandle<Option<Sink<S>>>, id: u64) -> Option<Sink<S>> {
    match tokio::time::timeout(CLOSE_TIMEOUT, &mut writer).await {
        Ok(Ok(sink)) => sink,
        Ok(Err(error)) => {
            debug!(connection = id, error = %error, "cable writer task failed");
            None
        }
        Err(_) => {
            debug!(
                connection = id,
                "cable client did not take the close frame in time"
            );
            writer.abort();
            None
        }
    }
}

/// Shuts down the write side and reads what the client still sends for
/// up to [`LINGER`], then drops the socket.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut socket: WebSocketStream<S>) {
    let raw = socket.get_mut();
    if raw.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buffer = [0u8; 1024];
        while matches!(raw.read(&mut buffer).await, Ok(read) if read > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

struct Reader<'a> {
    hub: &'a Arc<Hub>,
    subscriber: &'a Subscriber,
    subscriptions: Vec<Arc<str>>,
}

impl Reader<'_> {
    async fn run<S, W>(
        &mut self,
        stream: &mut SplitStream<WebSocketStream<S>>,
        writer: &mut JoinHandle<W>,
        idle_timeout: Duration,
    ) -> Ending
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut shutdown = self.hub.shutdown.subscribe();
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        loop {
            let frame = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => {
                    return Ending::Close(CloseCode::Away, "server shutting down");
                }
                _ = &mut *writer => return Ending::WriterGone,
                _ = &mut idle => return Ending::Close(CloseCode::Normal, "idle timeout"),
                frame = stream.next() => frame,
            };
            idle.as_mut().reset(Instant::now() + idle_timeout);

            let message = match frame {
                None => return Ending::Quiet,
                Some(Ok(message)) => message,
                Some(Err(WsError::Capacity(error))) => {
                    debug!(connection = self.id(), error = %error, "cable frame too large");
                    return Ending::Close(CloseCode::Size, "frame too large");
                }
                // RFC 6455, 8.1: a text frame that is not UTF-8 fails the
                // connection with 1007.
                Some(Err(WsError::Utf8(error))) => {
                    debug!(connection = self.id(), error = %error, "cable text frame is not UTF-8");
                    return Ending::Close(CloseCode::Invalid, "text frame is not valid UTF-8");
                }
                Some(Err(error)) => {
                    debug!(connection = self.id(), error = %error, "cable read failed");
                    return Ending::Quiet;
                }
            };
            match message {
                Message::Text(text) => {
                    if let Some(ending) = self.command(&text) {
                        return ending;
                    }
                }
                Message::Binary(_) => {
                    return Ending::Close(
                        CloseCode::Unsupported,
                        "binary frames are not supported",
                    );
                }
                // tungstenite replies to pings itself. Any frame counts as
                // activity.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(_) => return Ending::Quiet,
            }
        }
    }

    fn id(&self) -> u64 {
        self.subscriber.stats.id
    }

    /// Handles one text frame; returns an ending when it is a protocol
    /// violation.
    fn command(&mut self, text: &str) -> Option<Ending> {
        let command = match parse_command(text) {
            Ok(command) => command,
            Err(reason) => {
                debug!(connection = self.id(), reason, "invalid cable command");
                return Some(Ending::Close(CloseCode::Policy, reason));
            }
        };
        match command {
            Command::Subscribe(stream) => self.subscribe(&stream),
            Command::Unsubscribe(stream) => {
                if let Some(at) = self.subscriptions.iter().position(|s| **s == *stream) {
                    let name = self.subscriptions.swap_remove(at);
                    self.hub.unsubscribe(&name, self.id());
                }
                None
            }
            Command::Pong => None,
            Command::Unknown(kind) => {
                debug!(
                    connection = self.id(),
                    kind, "ignoring an unknown cable command"
                );
                None
            }
        }
    }

    fn subscribe(&mut self, stream: &str) -> Option<Ending> {
        if !self.subscriptions.iter().any(|s| **s == *stream) {
            if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
                return Some(Ending::Close(CloseCode::Policy, "too many subscriptions"));
            }
            let name = self.hub.subscribe(stream, self.subscriber);
            self.subscriptions.push(name);
        }
        let ack = format!(
            "{{\"type\":\"subscribed\",\"stream\":{}}}",
            super::json_string(stream)
        );
        if self
            .subscriber
            .queue
            .try_send(Arc::new(Utf8Bytes::from(ack)))
            .is_err()
        {
            self.hub.count_drop(&self.subscriber.stats, stream);
        }
        None
    }
}

fn valid_stream(stream: Option<String>) -> Result<String, &'static str> {
    match stream {
        None => Err("the command has no stream"),
        Some(stream) if stream.is_empty() => Err("the stream name is empty"),
        Some(stream) if stream.len() > MAX_STREAM_NAME => Err("the stream name is too long"),
        Some(stream) => Ok(stream),
    }
}

/// Sends queued messages and pings until the close instruction arrives.
/// Returns the sink so the connection can be closed cleanly, or `None`
/// after a write error.
async fn write_loop<S>(
    mut sink: Sink<S>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    mut close: oneshot::Receiver<Option<CloseFrame>>,
    ping_interval: Duration,
) -> Option<Sink<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            frame = &mut close => {
                let sent = match frame.ok().flatten() {
                    Some(frame) => sink.send(Message::Close(Some(frame))).await,
                    None => sink.close().await,
                };
                return match sent {
                    Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Some(sink),
                    Err(_) => None,
                };
            }
            _ = ping.tick() => {
                if sink.send(Message::Text(PING)).await.is_err() {
                    return None;
                }
            }
            message = outgoing.recv() => {
                let Some(message) = message else {
                    return Some(sink);
                };
                if send_batch(&mut sink, &mut outgoing, message).await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// Writes `first` and whatever else is already queued, up to
/// [`WRITE_BATCH`] messages, with one flush.
async fn send_batch<S>(
    sink: &mut Sink<S>,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    first: Outgoing,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    sink.feed(Message::Text((*first).clone())).await?;
    for _ in 1..WRITE_BATCH {
        match outgoing.try_recv() {
            Ok(message) => sink.feed(Message::Text((*message).clone())).await?,
            Err(_) => break,
        }
    }
    sink.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_into_their_kinds() {
        assert_eq!(
            parse_command(r#"{"type":"subscribe","stream":"scores","x":1}"#),
            Ok(Command::Subscribe("scores".into()))
        );
        assert_eq!(
            parse_command(r#"{"type":"unsubscribe","stream":"scores"}"#),
            Ok(Command::Unsubscribe("scores".into()))
        );
        assert_eq!(parse_command(r#"{"type":"pong"}"#), Ok(Command::Pong));
        assert_eq!(
            parse_command(r#"{"type":"hello"}"#),
            Ok(Command::Unknown("hello".into()))
        );
    }

    #[test]
    fn malformed_commands_are_refused_with_a_reason() {
        assert_eq!(parse_command("not json"), Err("invalid JSON command"));
        assert_eq!(
            parse_command(r#"{"stream":"s"}"#),
            Err("invalid JSON command")
        );
        assert_eq!(
            parse_command(r#"{"type":"subscribe"}"#),
            Err("the command has no stream")
        );
        assert_eq!(
            parse_command(r#"{"type":"subscribe","stream":""}"#),
            Err("the stream name is empty")
        );
        let long = format!(
            r#"{{"type":"subscribe","stream":"{}"}}"#,
            "s".repeat(MAX_STREAM_NAME + 1)
        );
        assert_eq!(parse_command(&long), Err("the stream name is too long"));
    }
}
