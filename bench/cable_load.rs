//! Load tool for the built-in cable, for loopback benchmarks only.
//!
//! `cable_load latency ADDRESS [SUBSCRIBERS] [BROADCASTS]` opens the
//! subscribers on one stream (with a minimal hand-written WebSocket
//! reader), POSTs the broadcasts one after another
//! (20 ms apart) and prints the end-to-end latency from the start of each
//! POST to each subscriber's receipt of the message.
//!
//! `cable_load idle ADDRESS PID [CONNECTIONS]` reads the resident set of
//! navigator (process PID) from /proc, opens the connections (each
//! subscribed to one of 100 streams), waits for things to settle, reads
//! it again and prints the growth per connection.
//!
//! The caller raises the open-file limit (`ulimit -n`) for both processes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

type Ws = WebSocketStream<TcpStream>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // One worker thread: the tool shares the machine with navigator and
    // should leave it a core (override with CABLE_LOAD_THREADS).
    let threads = std::env::var("CABLE_LOAD_THREADS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match args.first().map(String::as_str) {
        Some("latency") if args.len() >= 2 => {
            let address = parse_address(&args[1]);
            let subscribers = parse_count(args.get(2), 1000);
            let broadcasts = parse_count(args.get(3), 200);
            runtime.block_on(latency(address, subscribers, broadcasts))
        }
        Some("idle") if args.len() >= 3 => {
            let address = parse_address(&args[1]);
            let pid: u32 = args[2].parse().expect("PID is a number");
            let connections = parse_count(args.get(3), 10_000);
            runtime.block_on(idle(address, pid, connections))
        }
        _ => Err(
            "usage: cable_load latency ADDRESS [SUBSCRIBERS] [BROADCASTS]\n       \
                  cable_load idle ADDRESS PID [CONNECTIONS]"
                .to_string(),
        ),
    };
    if let Err(message) = result {
        eprintln!("cable_load: {message}");
        std::process::exit(1);
    }
}

fn parse_address(text: &str) -> SocketAddr {
    let address: SocketAddr = text.parse().expect("ADDRESS is host:port");
    assert!(
        address.ip().is_loopback(),
        "cable_load only targets loopback addresses"
    );
    address
}

fn parse_count(text: Option<&String>, default: usize) -> usize {
    text.map(|t| t.parse().expect("a count is a whole number"))
        .unwrap_or(default)
}

async fn connect(address: SocketAddr) -> Result<Ws, String> {
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{address}/cable"), stream)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

async fn subscribe(ws: &mut Ws, stream: &str) -> Result<(), String> {
    let command = format!(r#"{{"type":"subscribe","stream":"{stream}"}}"#);
    ws.send(Message::Text(command.into()))
        .await
        .map_err(|e| format!("subscribe: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.contains("\"subscribed\"") => return Ok(()),
            Some(Ok(_)) => {}
            other => return Err(format!("no subscription acknowledgement: {other:?}")),
        }
    }
}

/// Opens `count` connections, 200 at a time, each subscribed to the
/// stream `stream_of(i)`.
async fn open_many(
    address: SocketAddr,
    count: usize,
    stream_of: impl Fn(usize) -> String,
) -> Result<Vec<Ws>, String> {
    let mut sockets = Vec::with_capacity(count);
    let mut start = 0;
    while start < count {
        let end = (start + 200).min(count);
        let batch = (start..end).map(|i| {
            let stream = stream_of(i);
            async move {
                let mut ws = connect(address).await?;
                subscribe(&mut ws, &stream).await?;
                Ok::<_, String>(ws)
            }
        });
        for result in futures_util::future::join_all(batch).await {
            sockets.push(result?);
        }
        start = end;
    }
    Ok(sockets)
}

async fn latency(address: SocketAddr, subscribers: usize, broadcasts: usize) -> Result<(), String> {
    let mut sockets = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        sockets.push(LeanSubscriber::open(address, "bench").await?);
    }
    let base = Instant::now();
    // Nanoseconds after `base` at which each broadcast's POST started.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..broadcasts).map(|_| AtomicU64::new(0)).collect());

    let mut readers = Vec::new();
    for mut subscriber in sockets {
        let sent = sent.clone();
        readers.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(broadcasts);
            while samples.len() < broadcasts {
                let Ok(payload) = subscriber.next_text().await else {
                    break;
                };
                let received = base.elapsed().as_nanos() as u64;
                let Some(index) = sequence_number(&payload) else {
                    continue;
                };
                let started = sent[index].load(Ordering::Acquire);
                samples.push((index, received.saturating_sub(started)));
            }
            samples
        }));
    }

    let mut publisher = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connect publisher: {e}"))?;
    for index in 0..broadcasts {
        let body = format!(r#"{{"stream":"bench","data":{{"seq":{index}}}}}"#);
        let request = format!(
            "POST /_broadcast HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        sent[index].store(base.elapsed().as_nanos() as u64, Ordering::Release);
        publisher
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("POST: {e}"))?;
        read_response(&mut publisher).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut all = Vec::new();
    let mut slowest = vec![0u64; broadcasts];
    for reader in readers {
        let samples = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .map_err(|_| "subscribers did not receive every broadcast".to_string())?
            .map_err(|e| e.to_string())?;
        if samples.len() != broadcasts {
            return Err(format!(
                "a subscriber got {} of {broadcasts} messages",
                samples.len()
            ));
        }
        for (index, nanos) in samples {
            slowest[index] = slowest[index].max(nanos);
            all.push(nanos);
        }
    }
    all.sort_unstable();
    slowest.sort_unstable();
    println!(
        "latency subscribers={subscribers} broadcasts={broadcasts} deliveries={} \
         p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2} last_subscriber_p50_ms={:.2} last_subscriber_p99_ms={:.2}",
        all.len(),
        millis(percentile(&all, 50.0)),
        millis(percentile(&all, 90.0)),
        millis(percentile(&all, 99.0)),
        millis(*all.last().unwrap_or(&0)),
        millis(percentile(&slowest, 50.0)),
        millis(percentile(&slowest, 99.0)),
    );
    Ok(())
}

/// A WebSocket subscriber that parses server frames by hand, so that the
/// tool spends as little CPU as possible per message and the figures show
/// navigator rather than the client library.
struct LeanSubscriber {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl LeanSubscriber {
    async fn open(address: SocketAddr, stream_name: &str) -> Result<LeanSubscriber, String> {
        let mut stream = TcpStream::connect(address)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let handshake = format!(
            "GET /cable HTTP/1.1\r\nHost: {address}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream
            .write_all(handshake.as_bytes())
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream
                .read_exact(&mut byte)
                .await
                .map_err(|e| format!("handshake response: {e}"))?;
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(format!(
                "handshake rejected: {}",
                String::from_utf8_lossy(&head)
            ));
        }

        // Client frames are masked; a zero mask leaves the payload as is.
        let command = format!(r#"{{"type":"subscribe","stream":"{stream_name}"}}"#);
        let mut frame = vec![0x81, 0x80 | command.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(command.as_bytes());
        stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("subscribe: {e}"))?;
        let mut subscriber = LeanSubscriber {
            stream,
            buffer: Vec::with_capacity(256),
        };
        let ack = subscriber.next_text().await?;
        if !ack.contains("\"subscribed\"") {
            return Err(format!("unexpected first message {ack}"));
        }
        Ok(subscriber)
    }

    /// Reads the next unfragmented text frame and returns its payload.
    async fn next_text(&mut self) -> Result<String, String> {
        loop {
            if let Some((payload, used)) = parse_frame(&self.buffer) {
                self.buffer.drain(..used);
                if let Some(payload) = payload {
                    return Ok(payload);
                }
                continue;
            }
            let mut chunk = [0u8; 4096];
            let read = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if read == 0 {
                return Err("connection closed".to_string());
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
    }
}

/// Parses one unmasked server frame at the start of `buffer`: the text
/// payload (`None` for other opcodes) and the bytes it took, or `None`
/// while the frame is incomplete.
fn parse_frame(buffer: &[u8]) -> Option<(Option<String>, usize)> {
    if buffer.len() < 2 {
        return None;
    }
    let opcode = buffer[0] & 0x0f;
    let (length, header) = match buffer[1] & 0x7f {
        126 => (
            u16::from_be_bytes([*buffer.get(2)?, *buffer.get(3)?]) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buffer.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        short => (short as usize, 2),
    };
    let payload = buffer.get(header..header + length)?;
    let text = (opcode == 1).then(|| String::from_utf8_lossy(payload).into_owned());
    Some((text, header + length))
}

fn sequence_number(text: &str) -> Option<usize> {
    let at = text.find("\"seq\":")? + "\"seq\":".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads one HTTP/1.1 response with a `Content-Length` body.
async fn read_response(stream: &mut TcpStream) -> Result<(), String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream
            .read_exact(&mut byte)
            .await
            .map_err(|e| format!("read response: {e}"))?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("broadcast failed: {head}"));
    }
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("read body: {e}"))?;
    Ok(())
}

fn percentile(sorted: &[u64], percent: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((percent / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(nanos: u64) -> f64 {
    nanos as f64 / 1_000_000.0
}

async fn idle(address: SocketAddr, pid: u32, connections: usize) -> Result<(), String> {
    let before = resident_kib(pid)?;
    let sockets = open_many(address, connections, |i| format!("idle-{}", i % 100)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = resident_kib(pid)?;
    let per_connection = (after.saturating_sub(before) as f64) * 1024.0 / connections as f64;
    println!(
        "idle connections={connections} rss_before_kib={before} rss_after_kib={after} \
         bytes_per_connection={per_connection:.0}"
    );
    drop(sockets);
    Ok(())
}

/// `VmRSS` of process `pid`, in KiB.
fn resident_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}
