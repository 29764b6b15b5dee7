//! A lean HTTP/1.1 server for plain connections. It serves the common
//! request itself: a head that parses cleanly, with no body, no upgrade
//! and no `Expect`, which is nearly every request a browser sends to a
//! Rails tenant. The first request it does not serve, whether odd,
//! malformed or carrying a body, goes to hyper together with the bytes
//! already read, and hyper serves the rest of that connection. So every
//! error response, body framing and upgrade stays hyper's, and this
//! module responds only to requests it parsed in full.
//!
//! What it saves is per-request work: hyper's header timer, dispatcher
//! and encoder cost about a third of navigator's user time on a proxied
//! keep-alive request (see docs/benchmarks.md).

use std::fs::File;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::Interest;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::app::App;
use crate::body::{Body, RequestBody, WholeFile};
use crate::connection::{InFlight, SendTimeout};
use crate::pipeline::{self, Connection};
use crate::proxy::headers;

/// Maximum number of header fields in one request. hyper responds 431 to
/// more.
const MAX_HEADERS: usize = 100;

/// Maximum length of a request target that hyper accepts.
const MAX_TARGET_LENGTH: usize = u16::MAX as usize - 1;

/// Bytes of room made in the read buffer before each read.
const READ_RESERVE: usize = 4096;

/// A data frame up to this size is copied behind the response head, so
/// that both go out in one write.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Headers that forwarding a request upstream may add.
const FORWARDING_HEADERS: usize = 4;

/// Limits of one listener, read when it opens.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time allowed to send a request head, once its first byte came.
    pub header_read_timeout: Duration,
    /// Time a keep-alive connection may wait for its next request.
    pub keep_alive: Duration,
    /// Maximum length of a request head. A longer one goes to hyper, which
    /// responds 431.
    pub max_header_bytes: usize,
    /// Time a write may wait for the client to take bytes; zero waits
    /// without end.
    pub send_timeout: Duration,
}

/// The end of serving a connection.
pub enum Ending {
    /// The connection is done, and dropping the stream closes it.
    Closed,
    /// A request that hyper must serve, with the bytes read so far (that
    /// request and any after it).
    HandOver(Bytes),
}

/// Serves requests on `stream` until the client closes, the connection
/// idles out, `closing` turns true, or a request needs hyper.
pub async fn serve(
    stream: &mut TcpStream,
    app: &Arc<App>,
    connection: Connection,
    limits: Limits,
    closing: &watch::Receiver<bool>,
) -> Ending {
    // `closing` only ever turns true, so a change means shutdown. Checking
    // for one reads a counter, where reading the value would take the
    // channel's lock, which every connection shares.
    let closed_before = *closing.borrow();
    let shutting_down = || closed_before || closing.has_changed().unwrap_or(true);
    // One wait for shutdown serves every idle spell of the connection:
    // made anew for each, it would register with the channel each time.
    let mut signal = closing.clone();
    let mut shutdown = std::pin::pin!(async move {
        let _ = signal.wait_for(|closing| *closing).await;
    });
    let mut input = BytesMut::new();
    let mut output = Vec::new();
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    loop {
        // Read until a whole head is buffered.
        let mut deadline = None;
        let (request, keep_alive) = loop {
            if !input.is_empty() {
                // The request's URI and header values share these bytes.
                let bytes = input.split().freeze();
                match parse(&bytes) {
                    // hyper responds 431 to a head over the limit, however
                    // it arrived.
                    Parsed::Request { length, .. } if length > limits.max_header_bytes => {
                        return Ending::HandOver(bytes);
                    }
                    Parsed::Request {
                        request,
                        length,
                        keep_alive,
                    } => {
                        // Pipelined requests after this one wait their turn.
                        input.extend_from_slice(&bytes[length..]);
                        break (request, keep_alive);
                    }
                    Parsed::Partial if bytes.len() < limits.max_header_bytes => {
                        // Once the empty rest lets go of the buffer, the
                        // bytes own it alone and become the buffer again
                        // without a copy.
                        drop(std::mem::take(&mut input));
                        input = bytes
                            .try_into_mut()
                            .unwrap_or_else(|bytes| BytesMut::from(&bytes[..]));
                    }
                    Parsed::Partial | Parsed::Other => return Ending::HandOver(bytes),
                }
            }
            let limit = if input.is_empty() {
                limits.keep_alive
            } else {
                limits.header_read_timeout
            };
            match read(
                stream,
                &mut input,
                &mut timer,
                &mut deadline,
                limit,
                shutdown.as_mut(),
            )
            .await
            {
                Read::Data => {}
                Read::Closed => return Ending::Closed,
                Read::Failed(error) => {
                    debug!(peer = %connection.peer, error = %error, "reading a request failed");
                    return Ending::Closed;
                }
            }
        };

        let is_head = request.method() == Method::HEAD;
        let version = request.version();
        // This server bounds idleness itself, between requests.
        let in_flight = InFlight::untracked();
        // Kept in this function's state, where it is built in place.
        // Moving it into a box would copy all of it, a few kilobytes, for
        // every request.
        let mut pipeline = std::pin::pin!(pipeline::handle(app, connection, request, in_flight));
        // A client that closes its connection abandons its request, as
        // with hyper: the pipeline is dropped, which cancels a queued
        // request and logs it as 499.
        let mut probe = [0u8; 1];
        let mut watching = true;
        let response = loop {
            tokio::select! {
                biased;
                response = &mut pipeline => break response,
                peeked = stream.peek(&mut probe), if watching => match peeked {
                    // A client that sent more requests before closing its
                    // side still expects the responses to those.
                    Ok(0) if !input.is_empty() => watching = false,
                    Ok(0) => {
                        debug!(peer = %connection.peer, "client closed the connection before its response");
                        return Ending::Closed;
                    }
                    Err(error) => {
                        debug!(peer = %connection.peer, error = %error, "connection failed before its response");
                        return Ending::Closed;
                    }
                    // The next request, pipelined: it waits its turn.
                    Ok(_) => watching = false,
                },
            }
        };
        // Once shutdown has begun, this response is the last one, so it
        // carries `connection: close`.
        let reply = Reply {
            version,
            is_head,
            keep_alive: keep_alive && !shutting_down(),
        };
        let mut sink = Socket::new(stream, limits.send_timeout, &mut timer);
        match write_response(&mut sink, &mut output, response, reply).await {
            Ok(true) => {}
            Ok(false) => return Ending::Closed,
            Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                info!(peer = %connection.peer, error = %error, "closing a connection whose client stopped reading");
                return Ending::Closed;
            }
            Err(error) => {
                debug!(peer = %connection.peer, error = %error, "writing a response failed");
                return Ending::Closed;
            }
        }
        if shutting_down() {
            return Ending::Closed;
        }
        if output.capacity() > COALESCE_LIMIT * 2 {
            output = Vec::new();
        }
    }
}

/// The result of one read.
enum Read {
    Data,
    /// End of stream, the deadline, or shutdown.
    Closed,
    Failed(io::Error),
}

/// Reads what the socket has; when it has nothing, waits for more until
/// `deadline` (set to `limit` from now on the first wait). While no byte
/// of a request has arrived, shutdown ends the wait too.
async fn read<S: Future<Output = ()>>(
    stream: &mut TcpStream,
    input: &mut BytesMut,
    timer: &mut Option<Pin<Box<Sleep>>>,
    deadline: &mut Option<Instant>,
    limit: Duration,
    shutdown: Pin<&mut S>,
) -> Read {
    input.reserve(READ_RESERVE);
    // A read that fills less than the buffer marks the socket drained, so
    // this first try costs a system call only when bytes are there, and
    // needs no timer.
    let read = match stream.read_buf(input).now_or_never() {
        Some(read) => read,
        None => {
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + limit);
            let sleep = match timer {
                Some(sleep) => {
                    if sleep.deadline() != deadline {
                        sleep.as_mut().reset(deadline);
                    }
                    sleep
                }
                None => timer.insert(Box::pin(tokio::time::sleep_until(deadline))),
            };
            let idle = input.is_empty();
            tokio::select! {
                biased;
                read = stream.read_buf(input) => read,
                _ = sleep.as_mut() => return Read::Closed,
                _ = shutdown, if idle => return Read::Closed,
            }
        }
    };
    match read {
        Ok(0) => Read::Closed,
        Ok(_) => Read::Data,
        Err(error) => Read::Failed(error),
    }
}

/// The outcome of parsing the buffered bytes. It lives for one call on
/// the stack, where boxing the request would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request {
        request: Request<RequestBody>,
        /// Length of the head in the buffer.
        length: usize,
        keep_alive: bool,
    },
    Partial,
    /// Malformed, or a request this module leaves to hyper.
    Other,
}

/// Parses the head at the start of `bytes` into a request whose URI and
/// header values share `bytes`.
fn parse(bytes: &Bytes) -> Parsed {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let length = match parsed.parse_with_uninit_headers(bytes, &mut storage) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };

    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Parsed::Other;
    };
    let version = match minor {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => return Parsed::Other,
    };

    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }

    // hyper responds 414 to a longer target.
    if target.len() > MAX_TARGET_LENGTH {
        return Parsed::Other;
    }
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice_ref(target.as_bytes())) else {
        return Parsed::Other;
    };

    // Room for the headers that forwarding adds (`X-Forwarded-For`,
    // `-Proto`, `-Host`, `X-Request-Id`), so that adding them does not
    // grow the map.
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + FORWARDING_HEADERS);
    let mut connection_field = false;
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        connection_field |= name.eq_ignore_ascii_case(b"connection");
        // A body, an upgrade or an interim response: hyper's work.
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parsed::Other;
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(bytes.slice_ref(field.value)),
        ) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    let keep_alive = headers::keeps_alive_noted(version, &headers, connection_field);

    let mut request = Request::new(RequestBody::Empty);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Parsed::Request {
        request,
        length,
        keep_alive,
    }
}

/// The facts of a request that its response must follow.
#[derive(Debug, Clone, Copy)]
struct Reply {
    version: Version,
    is_head: bool,
    keep_alive: bool,
}

/// The way a response marks the end of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body may follow the head.
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection does.
    UntilClose,
}

/// Writes `response` and returns whether the connection may serve
/// another request.
async fn write_response<W: Sink>(
    stream: &mut W,
    output: &mut Vec<u8>,
    response: Response<Body>,
    reply: Reply,
) -> io::Result<bool> {
    let (mut parts, mut body) = response.into_parts();
    let whole_file = parts.extensions.remove::<WholeFile>();
    let mut headers = parts.headers;
    let status = parts.status;
    // One pass over the few fields of a response finds the ones that
    // framing reads, where a lookup of each would hash its name.
    let mut connection_field = false;
    let mut transfer_encoding = false;
    let mut declared_length = None;
    for (name, value) in &headers {
        if name == CONNECTION {
            connection_field = true;
        } else if name == TRANSFER_ENCODING {
            transfer_encoding = true;
        } else if name == CONTENT_LENGTH && declared_length.is_none() {
            declared_length = Some(parse_length(value));
        }
    }
    let mut keep_alive =
        reply.keep_alive && !(connection_field && headers::connection_has_token(&headers, "close"));

    if transfer_encoding {
        headers.remove(TRANSFER_ENCODING);
    }
    let bodyless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodyless {
        if status != StatusCode::NOT_MODIFIED {
            headers.remove(CONTENT_LENGTH);
        }
        Framing::None
    } else if let Some(declared) = declared_length {
        match declared {
            Some(length) => Framing::Length(length),
            // A handler's own malformed length: a body that ends with the
            // connection cannot be misread.
            None => {
                headers.remove(CONTENT_LENGTH);
                keep_alive = false;
                Framing::UntilClose
            }
        }
    } else if reply.is_head && body.is_end_stream() {
        // An empty body does not show the length of the GET response, so
        // no length is sent.
        Framing::None
    } else if let Some(length) = body.size_hint().exact() {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(length));
        Framing::Length(length)
    } else if reply.version == Version::HTTP_11 {
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::UntilClose
    };
    let framing = if reply.is_head {
        Framing::None
    } else {
        framing
    };

    output.clear();
    encode_head(output, reply, status, &headers, keep_alive);
    if framing == Framing::None {
        // HEAD, 204 and 304 send no body, so it is dropped unread.
        drop(body);
        stream.write_all(output).await?;
        return Ok(keep_alive);
    }
    if let (Framing::Length(length), Some(whole_file)) = (framing, whole_file) {
        if stream.sends_files() {
            // The body contains the same bytes. It is dropped unread once
            // the file has been sent or the send failed, so the access
            // record, written then, counts what `send_file` sent.
            stream.write_all(output).await?;
            let sent = send_file(stream, &whole_file, length).await?;
            drop(body);
            return Ok(keep_alive && whole_file_intact(&whole_file, sent, length));
        }
    }

    let mut written: u64 = 0;
    loop {
        // Sends what is buffered before waiting, so that a slow body
        // does not hold back the head or the chunks before it.
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                if !output.is_empty() {
                    stream.write_all(output).await?;
                    output.clear();
                }
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // NOTE: trailers are dropped. hyper sends them when the
                // request's `TE` lists `trailers`.
                Err(_) => continue,
            },
            Some(Err(error)) => {
                // What is buffered goes out, then closing without the rest
                // shows the client that the body is incomplete, whatever
                // its framing.
                debug!(error = %error, "response body failed; closing the connection");
                stream.write_all(output).await?;
                return Ok(false);
            }
        };
        if data.is_empty() {
            continue;
        }
        written += data.len() as u64;
        if let Framing::Length(length) = framing {
            if written > length {
                debug!(
                    declared = length,
                    "response body longer than its Content-Length; closing the connection"
                );
                stream.write_all(output).await?;
                return Ok(false);
            }
        }
        let suffix: &[u8] = if framing == Framing::Chunked {
            write_chunk_size(output, data.len());
            b"\r\n"
        } else {
            b""
        };
        if data.len() <= COALESCE_LIMIT {
            output.extend_from_slice(&data);
            output.extend_from_slice(suffix);
            // A body that is always ready (a fast upstream, a slow client)
            // must wait in the socket, not pile up here.
            if output.len() >= COALESCE_LIMIT {
                stream.write_all(output).await?;
                output.clear();
            }
        } else {
            write_both(stream, output, &data).await?;
            output.clear();
            output.extend_from_slice(suffix);
        }
    }
    match framing {
        Framing::Chunked => output.extend_from_slice(b"0\r\n\r\n"),
        Framing::Length(length) if written < length => {
            debug!(
                declared = length,
                written, "response body shorter than its Content-Length; closing the connection"
            );
            keep_alive = false;
        }
        _ => {}
    }
    if !output.is_empty() {
        stream.write_all(output).await?;
    }
    Ok(keep_alive && framing != Framing::UntilClose)
}

/// Sends the first `length` bytes of the file and returns how many went,
/// fewer when the file is shorter now. The count is kept in the file's
/// `sent` as it grows, for the access record.
async fn send_file<W: Sink>(
    stream: &mut W,
    whole_file: &WholeFile,
    length: u64,
) -> io::Result<u64> {
    let mut offset: libc::off_t = 0;
    loop {
        let sent = u64::try_from(offset).unwrap_or(0);
        if sent >= length {
            return Ok(sent);
        }
        // Linux sends at most about 2 GiB per call.
        let count = usize::try_from(length - sent)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        let file = &whole_file.file;
        let written =
            std::future::poll_fn(|cx| stream.poll_send_file(cx, file, &mut offset, count)).await?;
        if written == 0 {
            return Ok(sent);
        }
        whole_file.sent.fetch_add(written as u64, Ordering::Relaxed);
    }
}

/// Returns whether the client got the file as its headers describe it:
/// all of it, unchanged while it was sent. A file changed in place (not
/// replaced) during the send may have reached the client mixed. The
/// connection then closes, so that the client does not reuse it, and the
/// change is logged.
fn whole_file_intact(whole_file: &WholeFile, sent: u64, length: u64) -> bool {
    if sent < length {
        warn!(
            path = %whole_file.path.display(),
            declared = length,
            sent,
            "static file shrank while it was sent; closing the connection"
        );
        return false;
    }
    if !whole_file.is_unchanged() {
        warn!(
            path = %whole_file.path.display(),
            length,
            "static file changed while it was sent; the client may have mixed contents; closing the connection"
        );
        return false;
    }
    true
}

/// The destination of the lean server's responses.
trait Sink: AsyncWrite + Unpin {
    /// Returns whether [`Sink::poll_send_file`] works here.
    fn sends_files(&self) -> bool {
        false
    }

    /// Sends up to `count` bytes of `file` from `offset`, which it moves
    /// past them, and returns how many went.
    fn poll_send_file(
        &mut self,
        _cx: &mut Context<'_>,
        _file: &File,
        _offset: &mut libc::off_t,
        _count: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

/// The client's socket, with the connection's send timeout.
struct Socket<'a> {
    stream: &'a mut TcpStream,
    send_timeout: SendTimeout,
    /// The connection's timer, shared with the reads between requests.
    timer: &'a mut Option<Pin<Box<Sleep>>>,
}

impl<'a> Socket<'a> {
    fn new(
        stream: &'a mut TcpStream,
        send_timeout: Duration,
        timer: &'a mut Option<Pin<Box<Sleep>>>,
    ) -> Socket<'a> {
        Socket {
            stream,
            send_timeout: SendTimeout::new(send_timeout),
            timer,
        }
    }
}

impl AsyncWrite for Socket<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut *this.stream).poll_write(cx, data);
        this.send_timeout.check(this.timer, cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut *this.stream).poll_write_vectored(cx, slices);
        this.send_timeout.check(this.timer, cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}

impl Sink for Socket<'_> {
    fn sends_files(&self) -> bool {
        true
    }

    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: &File,
        offset: &mut libc::off_t,
        count: usize,
    ) -> Poll<io::Result<usize>> {
        let polled = loop {
            match self.stream.poll_write_ready(cx) {
                Poll::Pending => break Poll::Pending,
                Poll::Ready(Err(error)) => break Poll::Ready(Err(error)),
                Poll::Ready(Ok(())) => {}
            }
            let socket = &*self.stream;
            let sent = socket.try_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile(socket, file, Some(&mut *offset), count)
                    .map_err(io::Error::from)
            });
            match sent {
                // The readiness was stale; `try_io` cleared it.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                sent => break Poll::Ready(sent),
            }
        };
        self.send_timeout.check(self.timer, cx, polled)
    }
}

/// Writes `first` then `second`, in one system call where the kernel
/// takes both.
async fn write_both<W: Sink>(stream: &mut W, first: &[u8], second: &[u8]) -> io::Result<()> {
    let (mut first, mut second) = (first, second);
    while !first.is_empty() {
        let slices = [IoSlice::new(first), IoSlice::new(second)];
        let written = stream.write_vectored(&slices).await?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if written < first.len() {
            first = &first[written..];
        } else {
            second = &second[written - first.len()..];
            first = &[];
        }
    }
    stream.write_all(second).await
}

fn encode_head(
    output: &mut Vec<u8>,
    reply: Reply,
    status: StatusCode,
    headers: &HeaderMap,
    keep_alive: bool,
) {
    output.extend_from_slice(match reply.version {
        Version::HTTP_10 => b"HTTP/1.0 ",
        _ => b"HTTP/1.1 ",
    });
    output.extend_from_slice(status.as_str().as_bytes());
    output.push(b' ');
    output.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
    output.extend_from_slice(b"\r\n");
    let mut date = false;
    let mut connection = false;
    for (name, value) in headers {
        date |= name == DATE;
        connection |= name == CONNECTION;
        headers::write_field(output, name.as_str().as_bytes(), value.as_bytes());
    }
    if !date {
        output.extend_from_slice(b"date: ");
        DATE_CACHE.with(|cache| output.extend_from_slice(&cache.now()));
        output.extend_from_slice(b"\r\n");
    }
    if !connection {
        if !keep_alive {
            output.extend_from_slice(b"connection: close\r\n");
        } else if reply.version == Version::HTTP_10 {
            output.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    output.extend_from_slice(b"\r\n");
}

fn write_chunk_size(output: &mut Vec<u8>, size: usize) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut rest = size;
    loop {
        at -= 1;
        digits[at] = DIGITS[rest & 0xf];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    output.extend_from_slice(&digits[at..]);
    output.extend_from_slice(b"\r\n");
}

fn parse_length(value: &HeaderValue) -> Option<u64> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

thread_local! {
    static DATE_CACHE: DateCache = const { DateCache::new() };
}

/// The `Date` value of the current second, formatted once per second on
/// each thread.
struct DateCache {
    second: std::cell::Cell<u64>,
    text: std::cell::Cell<[u8; 29]>,
}

impl DateCache {
    const fn new() -> DateCache {
        DateCache {
            second: std::cell::Cell::new(u64::MAX),
            text: std::cell::Cell::new([0; 29]),
        }
    }

    fn now(&self) -> [u8; 29] {
        let now = SystemTime::now();
        let second = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        if second != self.second.get() {
            let formatted = httpdate::fmt_http_date(now);
            let mut text = [0u8; 29];
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
            }
            self.text.set(text);
            self.second.set(second);
        }
        self.text.get()
    }
}

/// A stream that first yields bytes already read from it, so hyper can
/// take over a connection in the middle of its input.
pub struct Rewind<S> {
    read: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(read: Bytes, inner: S) -> Rewind<S> {
        Rewind { read, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let count = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..count]);
        self.read.advance(count);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Mutex;

    use bytes::Bytes;
    use http_body_util::{Empty, Full, StreamBody};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt;

    fn parsed(text: &[u8]) -> Parsed {
        parse(&Bytes::copy_from_slice(text))
    }

    fn request(text: &[u8]) -> (Request<RequestBody>, usize, bool) {
        match parsed(text) {
            Parsed::Request {
                request,
                length,
                keep_alive,
            } => (request, length, keep_alive),
            Parsed::Partial => panic!("partial: {:?}", String::from_utf8_lossy(text)),
            Parsed::Other => panic!("left to hyper: {:?}", String::from_utf8_lossy(text)),
        }
    }

    #[test]
    fn plain_get_parsed_with_its_fields() {
        let text = b"GET /showcase/2025/?x=1 HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\nX-Two: a\r\nX-Two: b\r\n\r\nGET /next";
        let (request, length, keep_alive) = request(text);
        assert_eq!(length, text.len() - b"GET /next".len());
        assert!(keep_alive);
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.uri(), "/showcase/2025/?x=1");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "localhost");
        let twos: Vec<_> = request.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["a", "b"]);
        assert!(request.body().is_end_stream());
    }

    #[test]
    fn keep_alive_follows_version_and_connection() {
        let cases: [(&[u8], bool); 5] = [
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
                false,
            ),
            (b"GET / HTTP/1.0\r\n\r\n", false),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true),
            (
                b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(
                request(text).2,
                expected,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn bodies_upgrades_and_bad_heads_left_to_hyper() {
        let cases: [&[u8]; 9] = [
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
            b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        ];
        for text in cases {
            assert!(
                matches!(parsed(text), Parsed::Other),
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: v\r\n"))
            .collect();
        let text = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(parsed(text.as_bytes()), Parsed::Other));
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET_LENGTH));
        assert!(matches!(parsed(long.as_bytes()), Parsed::Other));
    }

    #[test]
    fn unfinished_head_is_partial() {
        for text in [
            &b"G"[..],
            b"GET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n",
        ] {
            assert!(matches!(parsed(text), Parsed::Partial));
        }
    }

    /// Returns the request head that hyper's own HTTP/1 server reads from
    /// `bytes`, or `None` when it rejects them.
    async fn hyper_reads(bytes: &[u8]) -> Option<http::request::Parts> {
        let (mut client, server) = tokio::io::duplex(1 << 17);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let sender = Mutex::new(Some(sender));
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            if let Some(sender) = sender.lock().unwrap().take() {
                let _ = sender.send(request.into_parts().0);
            }
            async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
        });
        let connection = tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service),
        );
        client.write_all(bytes).await.unwrap();
        let parts = tokio::time::timeout(Duration::from_secs(5), receiver).await;
        connection.abort();
        parts.ok()?.ok()
    }

    /// Every head the lean parser accepts, hyper accepts too, and reads
    /// alike: mutations of real heads, compared one by one.
    #[tokio::test]
    async fn mutated_heads_read_as_hyper_reads() {
        let seeds: [&[u8]; 5] = [
            b"GET /showcase/2025/boston/?page=2 HTTP/1.1\r\nHost: localhost:9999\r\nAccept: text/html\r\nCookie: a=b; c=d\r\n\r\n",
            b"GET http://localhost/showcase/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Mozilla/5.0 (X11)\r\n\r\n",
            b"HEAD /up HTTP/1.0\r\nConnection: keep-alive\r\nX-Empty:\r\n\r\n",
            b"DELETE /a%20b/%E2%82%AC HTTP/1.1\r\nHost: [::1]:3000\r\nX-Tab: a\tb\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\nAccept-Language: en;q=0.9\r\n\r\n",
        ];
        let alphabet = b" \t\r\n:/?#%@[]\0\x01\x7f\x80\xff\"'<>{}|\\^`~aZ09-_.,;=+*&";
        let mut random = fastrand::Rng::with_seed(8);
        let mut accepted = 0;
        for round in 0..3000 {
            let mut text = seeds[round % seeds.len()].to_vec();
            for _ in 0..random.usize(1..4) {
                let at = random.usize(..text.len());
                match random.u8(..3) {
                    0 => text.insert(at, alphabet[random.usize(..alphabet.len())]),
                    1 => {
                        text.remove(at);
                    }
                    _ => text[at] = alphabet[random.usize(..alphabet.len())],
                }
            }
            let Parsed::Request {
                request, length, ..
            } = parsed(&text)
            else {
                continue;
            };
            accepted += 1;
            let head_text = String::from_utf8_lossy(&text[..length]).into_owned();
            let theirs = hyper_reads(&text[..length]).await.unwrap_or_else(|| {
                panic!("hyper rejects what the lean parser accepts: {head_text:?}")
            });
            assert_eq!(request.method(), theirs.method, "{head_text:?}");
            assert_eq!(request.uri(), &theirs.uri, "{head_text:?}");
            assert_eq!(request.version(), theirs.version, "{head_text:?}");
            assert_eq!(request.headers(), &theirs.headers, "{head_text:?}");
        }
        // Enough mutations must parse for the comparison to mean anything.
        assert!(accepted > 500, "only {accepted} mutated heads parsed");
    }

    async fn written(response: Response<Body>, reply: Reply) -> (String, bool) {
        let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
        let mut output = Vec::new();
        let keep_alive = write_response(&mut ours, &mut output, response, reply)
            .await
            .unwrap();
        drop(ours);
        let mut text = Vec::new();
        theirs.read_to_end(&mut text).await.unwrap();
        (String::from_utf8(text).unwrap(), keep_alive)
    }

    const GET_11: Reply = Reply {
        version: Version::HTTP_11,
        is_head: false,
        keep_alive: true,
    };

    /// Drops the `date` line, which changes every second.
    fn without_date(text: &str) -> String {
        text.split("\r\n")
            .filter(|line| !line.starts_with("date: "))
            .collect::<Vec<_>>()
            .join("\r\n")
    }

    fn streamed(chunks: &[&'static str]) -> Body {
        let frames = chunks.iter().map(|chunk| {
            Ok::<_, crate::body::BoxError>(http_body::Frame::data(Bytes::from(*chunk)))
        });
        StreamBody::new(futures_util::stream::iter(frames.collect::<Vec<_>>())).boxed()
    }

    #[tokio::test]
    async fn known_length_written_with_content_length() {
        let (text, keep_alive) = written(Response::new(crate::body::full("hello")), GET_11).await;
        assert!(text.contains("\r\ndate: "), "{text}");
        assert_eq!(
            without_date(&text),
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
        );
        assert!(keep_alive);
    }

    #[tokio::test]
    async fn unknown_length_chunked_or_until_close() {
        let response = Response::new(streamed(&["ab", "", "cdefghijklmnopq"]));
        let (text, keep_alive) = written(response, GET_11).await;
        assert_eq!(
            without_date(&text),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\nF\r\ncdefghijklmnopq\r\n0\r\n\r\n"
        );
        assert!(keep_alive);

        let reply = Reply {
            version: Version::HTTP_10,
            ..GET_11
        };
        let (text, keep_alive) = written(Response::new(streamed(&["ab", "cd"])), reply).await;
        assert_eq!(
            without_date(&text),
            "HTTP/1.0 200 OK\r\nconnection: close\r\n\r\nabcd"
        );
        assert!(!keep_alive);
    }

    #[tokio::test]
    async fn head_and_bodyless_statuses_send_no_body() {
        let reply = Reply {
            is_head: true,
            ..GET_11
        };
        let (text, _) = written(Response::new(crate::body::full("hello")), reply).await;
        assert_eq!(
            without_date(&text),
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
        );

        let (text, _) = written(Response::new(crate::body::empty()), reply).await;
        assert_eq!(without_date(&text), "HTTP/1.1 200 OK\r\n\r\n");

        let mut response = Response::new(crate::body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        let (text, keep_alive) = written(response, GET_11).await;
        assert_eq!(without_date(&text), "HTTP/1.1 204 No Content\r\n\r\n");
        assert!(keep_alive);
    }

    #[tokio::test]
    async fn short_body_for_its_length_ends_the_connection() {
        let mut response = Response::new(streamed(&["abc"]));
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("10"));
        let (text, keep_alive) = written(response, GET_11).await;
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
        assert!(!keep_alive);
    }

    #[tokio::test]
    async fn large_frames_written_after_the_head() {
        let big = "x".repeat(COALESCE_LIMIT * 3);
        let body = Full::new(Bytes::from(big.clone()))
            .map_err(|never| match never {})
            .boxed();
        let (text, _) = written(Response::new(body), GET_11).await;
        let expected = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{big}",
            big.len()
        );
        assert_eq!(without_date(&text), expected);
    }

    /// A body whose frames are always ready (a fast upstream) goes out as
    /// it comes: the buffer stays small while the client reads slowly.
    #[tokio::test]
    async fn ready_body_not_buffered_whole() {
        let chunk = Bytes::from(vec![b'x'; 8192]);
        let frames: Vec<_> = (0..200)
            .map(|_| Ok::<_, crate::body::BoxError>(http_body::Frame::data(chunk.clone())))
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).await.unwrap();
            all.len()
        });
        let mut output = Vec::new();
        write_response(&mut ours, &mut output, Response::new(body), GET_11)
            .await
            .unwrap();
        drop(ours);
        assert!(reader.await.unwrap() > 200 * 8192);
        assert!(
            output.capacity() <= 4 * COALESCE_LIMIT,
            "{}",
            output.capacity()
        );
    }

    #[tokio::test]
    async fn rewind_yields_the_read_bytes_first() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut rewound = Rewind::new(Bytes::from_static(b"hello"), server);
        let mut text = String::new();
        rewound.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "hello world");
    }

    impl Sink for tokio::io::DuplexStream {}

    /// Returns a connected pair of loopback sockets: navigator's end and
    /// the client's.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    /// Returns a body of `data` that notes when its frame is read.
    fn noting_body(data: Vec<u8>, read: &Arc<std::sync::atomic::AtomicBool>) -> Body {
        let read = read.clone();
        let frames =
            futures_util::StreamExt::map(futures_util::stream::iter([data]), move |data| {
                read.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, crate::body::BoxError>(http_body::Frame::data(Bytes::from(data)))
            });
        StreamBody::new(frames).boxed()
    }

    /// Returns a response that marks `file` as its whole body, with a body
    /// of the same length but other bytes, so the client shows which went
    /// out. `change_time` is the version the response was made for: the
    /// file's own, unless a test gives another.
    fn whole_file_response(
        file: std::fs::File,
        length: usize,
        read: &Arc<std::sync::atomic::AtomicBool>,
        change_time: Option<(i64, i64)>,
    ) -> (Response<Body>, WholeFile) {
        let metadata = file.metadata().unwrap();
        let change_time = change_time.unwrap_or(crate::body::change_time(&metadata));
        let whole_file = WholeFile::new(file, std::path::Path::new("bundle.js"), change_time);
        let mut response = Response::new(noting_body(vec![b'-'; length], read));
        response
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(length));
        response.extensions_mut().insert(whole_file.clone());
        (response, whole_file)
    }

    /// Writes `response` to a loopback socket and returns whether the
    /// connection may go on, and what the client received.
    async fn sent_on_socket(response: Response<Body>) -> (bool, Vec<u8>) {
        let (mut server, client) = socket_pair().await;
        let reader = tokio::spawn(read_to_end(client));
        let mut timer = None;
        let mut sink = Socket::new(&mut server, Duration::from_secs(60), &mut timer);
        let keep_alive = write_response(&mut sink, &mut Vec::new(), response, GET_11)
            .await
            .unwrap();
        drop(server);
        (keep_alive, reader.await.unwrap())
    }

    async fn read_to_end(mut client: TcpStream) -> Vec<u8> {
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        received
    }

    #[tokio::test]
    async fn whole_file_sent_from_disk() {
        let contents: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &contents).unwrap();
        let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (response, whole_file) = whole_file_response(file, contents.len(), &read, None);

        let (keep_alive, received) = sent_on_socket(response).await;

        assert!(keep_alive);
        let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(received[head_end..], contents[..]);
        // The access record counts the bytes sent from the file, and the
        // body's copy of them is not counted again.
        assert_eq!(
            whole_file.sent.load(Ordering::Relaxed),
            contents.len() as u64
        );
        assert!(!read.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn whole_file_falls_back_to_body() {
        let file = tempfile::tempfile().unwrap();
        let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (response, whole_file) = whole_file_response(file, 5, &read, None);
        let (text, keep_alive) = written(response, GET_11).await;
        assert!(keep_alive);
        assert!(text.ends_with("\r\n\r\n-----"), "{text}");
        assert_eq!(whole_file.sent.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn shrunk_file_closes_connection() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, b"short").unwrap();
        let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (response, whole_file) = whole_file_response(file, 100_000, &read, None);

        let (keep_alive, received) = sent_on_socket(response).await;

        assert!(!keep_alive);
        assert!(received.ends_with(b"\r\n\r\nshort"));
        assert_eq!(whole_file.sent.load(Ordering::Relaxed), 5);
    }

    #[tokio::test]
    async fn changed_file_closes_connection() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &[b'a'; 70_000]).unwrap();
        let read = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Made for an older version of the file.
        let (response, _) = whole_file_response(file, 70_000, &read, Some((1, 0)));

        let (keep_alive, received) = sent_on_socket(response).await;

        assert!(!keep_alive);
        assert!(received.ends_with(&[b'a'; 70_000]));
    }

    /// Returns a response whose body is far larger than the socket buffers
    /// on both ends.
    fn large_body() -> Response<Body> {
        Response::new(crate::body::full(vec![b'x'; 64 << 20]))
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_client_times_out() {
        let (mut server, _client) = socket_pair().await;
        let mut timer = None;
        let mut sink = Socket::new(&mut server, Duration::from_secs(60), &mut timer);
        let error = write_response(&mut sink, &mut Vec::new(), large_body(), GET_11)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }

    /// Real time: with the clock paused, the runtime may move it on before
    /// the kernel reports the room that a read made.
    #[tokio::test]
    async fn slow_reader_gets_whole_body() {
        let (mut server, mut client) = socket_pair().await;
        let reader = tokio::spawn(async move {
            let mut received = 0;
            let mut chunk = vec![0; 1 << 20];
            loop {
                // Each pause is shorter than the send timeout; together
                // they are longer.
                tokio::time::sleep(Duration::from_millis(250)).await;
                match client.read(&mut chunk).await.unwrap() {
                    0 => return received,
                    read => received += read,
                }
            }
        });
        let body = Response::new(crate::body::full(vec![b'x'; 16 << 20]));
        let mut timer = None;
        let mut sink = Socket::new(&mut server, Duration::from_secs(1), &mut timer);
        write_response(&mut sink, &mut Vec::new(), body, GET_11)
            .await
            .unwrap();
        drop(server);
        assert!(reader.await.unwrap() > 16 << 20);
    }
}
