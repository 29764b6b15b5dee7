//! The built-in WebSocket pub/sub ("cable"): a stand-in for Action Cable
//! plus Redis that speaks the TurboCable protocol. Browsers connect to
//! `cable.path` and subscribe to named streams; tenants publish with an
//! HTTP POST to `cable.broadcast_path`, which only loopback peers may use.
//!
//! One [`Hub`] lives as long as the process, so open connections survive a
//! reload; the two paths come from the snapshot each request runs under.
//!
//! Delivery never waits for a client. Each connection has a bounded queue
//! drained by its own writer task. A broadcast that finds a queue full
//! drops the message for that connection (counted and logged) instead of
//! slowing the others down.

mod connection;

pub use connection::{Command, parse_command};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, info, warn};

use crate::body::{self, Body, BoxError};
use crate::responses;

/// Largest broadcast request body accepted, in bytes.
pub const MAX_BROADCAST_BYTES: usize = 1024 * 1024;

/// Timing and size limits of the hub.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between the `{"type":"ping"}` frames sent to each client.
    pub ping_interval: Duration,
    /// A client that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// Messages queued per connection; a broadcast that finds the queue
    /// full is dropped for that connection.
    pub send_queue: usize,
    /// Largest frame or message a client may send, in bytes; a larger one
    /// closes the connection with 1009.
    pub max_frame: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            send_queue: 256,
            max_frame: 128 * 1024,
        }
    }
}

impl Settings {
    /// Reads the defaults, overridden by `NAVIGATOR_CABLE_PING_INTERVAL`,
    /// `NAVIGATOR_CABLE_IDLE_TIMEOUT` (durations such as `500ms`) and
    /// `NAVIGATOR_CABLE_SEND_QUEUE` (a message count). These exist so
    /// tests need not wait a minute; an invalid value is logged and the
    /// default kept.
    pub fn from_env() -> Settings {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Settings {
        let mut settings = Settings::default();
        let duration = |name: &str, default: Duration| match lookup(name) {
            None => default,
            Some(text) => match crate::config::units::parse_duration(&text) {
                Ok(value) if !value.is_zero() => value,
                Ok(_) => {
                    warn!(variable = name, value = %text, "ignoring a zero duration");
                    default
                }
                Err(error) => {
                    warn!(variable = name, value = %text, error = %error, "ignoring an invalid duration");
                    default
                }
            },
        };
        settings.ping_interval = duration("NAVIGATOR_CABLE_PING_INTERVAL", settings.ping_interval);
        settings.idle_timeout = duration("NAVIGATOR_CABLE_IDLE_TIMEOUT", settings.idle_timeout);
        if let Some(text) = lookup("NAVIGATOR_CABLE_SEND_QUEUE") {
            match text.trim().parse::<usize>() {
                Ok(size) if size > 0 => settings.send_queue = size,
                _ => warn!(
                    variable = "NAVIGATOR_CABLE_SEND_QUEUE",
                    value = %text,
                    "ignoring an invalid queue size; expected a positive whole number"
                ),
            }
        }
        settings
    }
}

/// Returns whether `ip` is a loopback address: 127.0.0.0/8, `::1`, or an
/// IPv4-mapped IPv6 form of 127.0.0.0/8.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A message in a connection's queue. The `Arc` keeps each queue slot one
/// pointer wide; the text itself is shared by every queue it is in.
type Outgoing = Arc<Utf8Bytes>;

/// The part of a subscribed connection that a broadcast uses.
#[derive(Clone)]
struct Subscriber {
    queue: mpsc::Sender<Outgoing>,
    stats: Arc<ConnectionStats>,
}

/// Counters of one connection, shared between the connection and every
/// stream it is subscribed to.
#[derive(Debug)]
struct ConnectionStats {
    id: u64,
    peer: SocketAddr,
    /// Messages dropped because this connection's queue was full.
    dropped: AtomicU64,
}

/// The outcome of one broadcast.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Connections whose queue took the message.
    pub delivered: usize,
    /// Connections whose queue was full, so they lost the message.
    pub dropped: usize,
}

/// The pub/sub hub: streams, their subscribers and the counters.
pub struct Hub {
    settings: Settings,
    /// Subscribers of each stream by connection id. Broadcasts take the
    /// read lock; it is never held across an `.await`.
    streams: RwLock<HashMap<Arc<str>, HashMap<u64, Subscriber>>>,
    next_id: AtomicU64,
    open: AtomicUsize,
    /// Signalled whenever the last open connection ends.
    all_closed: Notify,
    dropped_total: AtomicU64,
    /// When the last slow-consumer warning was logged, so a flood of drops
    /// logs one line per interval.
    last_drop_warning: Mutex<Option<Instant>>,
    shutdown: watch::Sender<bool>,
}

/// Minimum time between two slow-consumer warnings.
const DROP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl Hub {
    pub fn new(settings: Settings) -> Arc<Hub> {
        Arc::new(Hub {
            settings,
            streams: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
            dropped_total: AtomicU64::new(0),
            last_drop_warning: Mutex::new(None),
            shutdown: watch::Sender::new(false),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Open WebSocket connections.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Messages dropped for slow connections since the start.
    pub fn dropped_messages(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Number of streams with at least one subscriber.
    pub fn stream_count(&self) -> usize {
        self.streams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Accepts a WebSocket handshake on the cable path with 101 and serves
    /// the connection once hyper hands it over. `head` must be the request
    /// head as hyper delivered it, so that it still contains the upgrade.
    /// `activity` is kept until the connection closes; the pipeline passes
    /// the machine-idle guard, so an open cable keeps the machine awake.
    pub fn accept<G: Send + 'static>(
        self: &Arc<Self>,
        head: &mut http::request::Parts,
        peer: SocketAddr,
        activity: G,
    ) -> Response<Body> {
        let accept_key = match handshake_key(head) {
            Ok(key) => key,
            Err(rejection) => return *rejection,
        };
        let Some(upgrade) = head.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return responses::text(
                StatusCode::UPGRADE_REQUIRED,
                "426 Upgrade Required: the cable needs an HTTP/1.1 WebSocket upgrade",
            );
        };
        if *self.shutdown.borrow() {
            return responses::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "503 Service Unavailable: the server is shutting down",
            );
        }

        let hub = self.clone();
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => connection::serve(hub, TokioIo::new(upgraded), peer).await,
                Err(error) => debug!(%peer, error = %error, "cable upgrade failed"),
            }
            drop(activity);
        });

        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(SEC_WEBSOCKET_ACCEPT, accept_key);
        response
    }

    /// Serves a POST to the broadcast path: `{"stream": S, "data": D}`
    /// goes to every subscriber of S. Only loopback peers may publish,
    /// judged by the socket address `peer`, never by headers.
    pub async fn broadcast_endpoint<B>(
        &self,
        method: &Method,
        body: B,
        peer: SocketAddr,
    ) -> Response<Body>
    where
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        if !is_loopback(peer.ip()) {
            warn!(%peer, "broadcast rejected: the peer is not a loopback address");
            return responses::text(
                StatusCode::FORBIDDEN,
                "403 Forbidden: broadcasts are accepted from loopback addresses only",
            );
        }
        if method != Method::POST {
            let mut response = responses::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed: send broadcasts with POST",
            );
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("POST"));
            return response;
        }

        let bytes = match Limited::new(body, MAX_BROADCAST_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return responses::text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!(
                        "413 Payload Too Large: broadcasts are limited to {MAX_BROADCAST_BYTES} bytes"
                    ),
                );
            }
            Err(error) => {
                debug!(%peer, error = %error, "reading a broadcast body failed");
                return responses::bad_request("failed to read the request body");
            }
        };
        let request = match parse_broadcast(&bytes) {
            Ok(request) => request,
            Err(reason) => {
                debug!(%peer, reason = %reason, "invalid broadcast rejected");
                return responses::bad_request(&reason);
            }
        };

        let data = request.data.as_deref().map_or("null", RawValue::get);
        let delivery = self.broadcast(&request.stream, data);
        debug!(
            stream = %request.stream,
            delivered = delivery.delivered,
            dropped = delivery.dropped,
            "broadcast"
        );
        let summary = format!(
            "{{\"delivered\":{},\"dropped\":{}}}\n",
            delivery.delivered, delivery.dropped
        );
        let mut response = Response::new(body::full(summary));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }

    /// Queues `{"type":"message","stream":S,"data":D}` for every subscriber
    /// of `stream`; `data` is JSON text inserted as it is. The message is
    /// serialized once and shared by all queues.
    pub fn broadcast(&self, stream: &str, data: &str) -> Delivery {
        let message: Outgoing = Arc::new(Utf8Bytes::from(format!(
            "{{\"type\":\"message\",\"stream\":{},\"data\":{data}}}",
            json_string(stream)
        )));
        let streams = self.streams.read().unwrap_or_else(PoisonError::into_inner);
        let Some(subscribers) = streams.get(stream) else {
            return Delivery::default();
        };
        let mut delivery = Delivery::default();
        for subscriber in subscribers.values() {
            match subscriber.queue.try_send(message.clone()) {
                Ok(()) => delivery.delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    delivery.dropped += 1;
                    self.count_drop(&subscriber.stats, stream);
                }
                // The connection is ending and unsubscribes on its own.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivery
    }

    /// Shuts the cable down: every open connection gets a close frame with
    /// 1001 (going away), and new handshakes get 503. Waits up to `grace`
    /// for the connections to end; returns how many were still open.
    pub async fn close_all(&self, grace: Duration) -> usize {
        self.shutdown.send_replace(true);
        let open = self.open_connections();
        if open > 0 {
            info!(connections = open, "closing cable connections");
        }
        let closed = async {
            loop {
                let notified = self.all_closed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.open_connections() == 0 {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(grace, closed).await.is_err() {
            let left = self.open_connections();
            warn!(
                connections = left,
                grace_ms = grace.as_millis() as u64,
                "cable connections still open after the grace period"
            );
            return left;
        }
        0
    }

    fn count_drop(&self, stats: &ConnectionStats, stream: &str) {
        let dropped = stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        let total = self.dropped_total.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_drop_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < DROP_WARNING_INTERVAL) {
            return;
        }
        *last = Some(now);
        warn!(
            connection = stats.id,
            peer = %stats.peer,
            stream,
            dropped,
            dropped_total = total,
            "cable client reads too slowly; messages dropped"
        );
    }

    /// Adds a connection to `stream` and returns the shared stream name.
    fn subscribe(&self, stream: &str, subscriber: &Subscriber) -> Arc<str> {
        let mut streams = self.streams.write().unwrap_or_else(PoisonError::into_inner);
        let key = match streams.get_key_value(stream) {
            Some((key, _)) => key.clone(),
            None => Arc::from(stream),
        };
        streams
            .entry(key.clone())
            .or_default()
            .insert(subscriber.stats.id, subscriber.clone());
        key
    }

    fn unsubscribe(&self, stream: &str, id: u64) {
        let mut streams = self.streams.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(subscribers) = streams.get_mut(stream) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                streams.remove(stream);
            }
        }
    }

    fn register(self: &Arc<Self>, peer: SocketAddr) -> Registration {
        self.open.fetch_add(1, Ordering::Relaxed);
        crate::metrics::CABLE_CONNECTIONS_OPENED.inc();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Registration {
            hub: self.clone(),
            stats: Arc::new(ConnectionStats {
                id,
                peer,
                dropped: AtomicU64::new(0),
            }),
        }
    }
}

/// Counts a connection as open until dropped.
struct Registration {
    hub: Arc<Hub>,
    stats: Arc<ConnectionStats>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.hub.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.hub.all_closed.notify_waiters();
        }
    }
}

/// Checks the WebSocket handshake headers and returns the
/// `Sec-WebSocket-Accept` value, or the response that rejects it.
fn handshake_key(head: &http::request::Parts) -> Result<HeaderValue, Box<Response<Body>>> {
    if !crate::proxy::headers::is_websocket_upgrade(&head.headers) {
        let mut response = responses::text(
            StatusCode::UPGRADE_REQUIRED,
            "426 Upgrade Required: this path accepts WebSocket connections only",
        );
        response
            .headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return Err(Box::new(response));
    }
    if head.method != Method::GET {
        return Err(Box::new(responses::bad_request(
            "a WebSocket handshake must use GET",
        )));
    }
    let version = head.headers.get(http::header::SEC_WEBSOCKET_VERSION);
    if version.is_none_or(|v| v.as_bytes() != b"13") {
        let mut response = responses::text(
            StatusCode::UPGRADE_REQUIRED,
            "426 Upgrade Required: only WebSocket version 13 is supported",
        );
        response.headers_mut().insert(
            http::header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(Box::new(response));
    }
    let Some(key) = head.headers.get(http::header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(responses::bad_request(
            "the WebSocket handshake has no Sec-WebSocket-Key",
        )));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    HeaderValue::from_str(&accept)
        .map_err(|_| Box::new(responses::bad_request("invalid Sec-WebSocket-Key")))
}

/// The body of a broadcast request.
#[derive(Debug, Deserialize)]
pub struct BroadcastRequest {
    pub stream: String,
    /// Absent and `null` both deliver `null`.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// Parses the body of a POST to the broadcast endpoint.
pub fn parse_broadcast(bytes: &[u8]) -> Result<BroadcastRequest, String> {
    let request: BroadcastRequest = serde_json::from_slice(bytes)
        .map_err(|error| format!("invalid broadcast JSON: {error}"))?;
    if request.stream.is_empty() {
        return Err("the broadcast's stream is empty".to_string());
    }
    Ok(request)
}

/// `text` as a JSON string literal.
pub fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers_are_127_8_and_ipv6_one() {
        for text in [
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.254",
            "::1",
            "::ffff:127.0.0.9",
        ] {
            assert!(is_loopback(text.parse().unwrap()), "{text}");
        }
        for text in [
            "10.0.0.1",
            "192.168.1.2",
            "0.0.0.0",
            "::",
            "fdaa::3",
            "::ffff:10.1.2.3",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(text.parse().unwrap()), "{text}");
        }
    }

    #[test]
    fn broadcast_body_needs_stream() {
        let request = parse_broadcast(br#"{"stream":"s","data":{"a":[1,2]}}"#).unwrap();
        assert_eq!(request.stream, "s");
        assert_eq!(request.data.unwrap().get(), r#"{"a":[1,2]}"#);
        assert!(
            parse_broadcast(br#"{"stream":"s"}"#)
                .unwrap()
                .data
                .is_none()
        );

        let missing = parse_broadcast(br#"{"data":1}"#).unwrap_err();
        assert!(missing.contains("missing field `stream`"), "{missing}");
        assert!(parse_broadcast(br#"{"stream":""}"#).is_err());
        assert!(parse_broadcast(br#"{"stream":7}"#).is_err());
        assert!(parse_broadcast(b"not json").is_err());
    }

    #[test]
    fn broadcast_without_subscribers_delivers_nothing() {
        let hub = Hub::new(Settings::default());
        assert_eq!(hub.broadcast("nobody", "1"), Delivery::default());
    }

    #[tokio::test]
    async fn full_queue_drops_and_counts() {
        let hub = Hub::new(Settings::default());
        let registration = hub.register("127.0.0.1:1".parse().unwrap());
        let (queue, mut receiver) = mpsc::channel(2);
        let subscriber = Subscriber {
            queue,
            stats: registration.stats.clone(),
        };
        hub.subscribe("s", &subscriber);

        for _ in 0..5 {
            hub.broadcast("s", "\"x\"");
        }
        assert_eq!(registration.stats.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(hub.dropped_messages(), 3);
        let first = receiver.recv().await.unwrap();
        assert_eq!(
            first.as_str(),
            r#"{"type":"message","stream":"s","data":"x"}"#
        );

        hub.unsubscribe("s", registration.stats.id);
        assert_eq!(hub.stream_count(), 0);
    }

    async fn post(hub: &Hub, method: Method, peer: &str, body: &str) -> (StatusCode, String) {
        let body = http_body_util::Full::new(bytes::Bytes::from(body.to_string()));
        let response = hub
            .broadcast_endpoint(&method, body, peer.parse().unwrap())
            .await;
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn broadcast_endpoint_checks_peer_method_body() {
        let hub = Hub::new(Settings::default());
        let valid = r#"{"stream":"s","data":1}"#;

        let (status, _) = post(&hub, Method::POST, "10.1.2.3:5000", valid).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = post(&hub, Method::POST, "[fdaa::2]:5000", valid).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = post(&hub, Method::GET, "10.1.2.3:5000", "").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "the peer is judged first");

        let (status, _) = post(&hub, Method::GET, "127.0.0.1:5000", "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        let (status, text) = post(&hub, Method::POST, "127.0.0.1:5000", "{").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let (status, text) = post(&hub, Method::POST, "127.0.0.1:5000", r#"{"data":1}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("stream"), "{text}");
        let huge = format!(
            r#"{{"stream":"s","data":"{}"}}"#,
            "x".repeat(MAX_BROADCAST_BYTES)
        );
        let (status, _) = post(&hub, Method::POST, "127.0.0.1:5000", &huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

        let (status, text) = post(&hub, Method::POST, "[::1]:5000", valid).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, "{\"delivered\":0,\"dropped\":0}\n");
    }

    #[test]
    fn settings_from_environment() {
        let settings = Settings::from_lookup(|name| match name {
            "NAVIGATOR_CABLE_PING_INTERVAL" => Some("250ms".into()),
            "NAVIGATOR_CABLE_IDLE_TIMEOUT" => Some("2s".into()),
            "NAVIGATOR_CABLE_SEND_QUEUE" => Some("8".into()),
            _ => None,
        });
        assert_eq!(settings.ping_interval, Duration::from_millis(250));
        assert_eq!(settings.idle_timeout, Duration::from_secs(2));
        assert_eq!(settings.send_queue, 8);

        let invalid = Settings::from_lookup(|name| match name {
            "NAVIGATOR_CABLE_IDLE_TIMEOUT" => Some("soon".into()),
            "NAVIGATOR_CABLE_SEND_QUEUE" => Some("0".into()),
            _ => None,
        });
        assert_eq!(invalid.idle_timeout, Duration::from_secs(60));
        assert_eq!(invalid.send_queue, 256);
    }

    #[test]
    fn stream_names_are_json_escaped() {
        assert_eq!(json_string("a\"b\\c"), r#""a\"b\\c""#);
    }
}
