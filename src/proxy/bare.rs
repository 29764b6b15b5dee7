//! A lean HTTP/1.1 client for requests without a body on pooled upstream
//! connections.
//!
//! Most requests to a tenant are GETs without a body. hyper's client
//! gives each upstream connection an 8 KiB write buffer and a read buffer
//! of at least 8 KiB (its `INIT_BUFFER_SIZE`), routes every request
//! through an internal channel, and keeps all of it while the connection
//! sits in the pool. Here a connection is a socket and a read buffer that
//! starts at 4 KiB and is freed when the connection is parked.
//!
//! The request head is written in one call and the response head is
//! parsed with `httparse`. The body is framed by Content-Length, chunked
//! coding or the end of the connection (RFC 9112, section 6.3). A body
//! that arrived with its head is copied out at once, so the connection is
//! back in the pool before the response is written to the client.
//!
//! Requests with a body, and upgrades, still go through hyper.
//!
//! NOTE: trailers after a chunked body are read and dropped, and a
//! reason phrase other than the standard one is not passed on (the
//! client sees the standard phrase for the status), where hyper's client
//! kept both.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::headers::{Added, write_field};
use crate::body::BoxError;

/// Maximum number of header fields in one response head.
const MAX_HEADERS: usize = 128;
/// Maximum size of a response head, in bytes.
const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Room reserved for each read while a head or a small body comes in.
const READ_RESERVE: usize = 4096;
/// Room reserved for each read of a body longer than [`READ_RESERVE`].
const BODY_READ_RESERVE: usize = 16 * 1024;
/// Body data up to this size is copied out of the read buffer, so the
/// buffer serves the next response. Larger data is handed over without a
/// copy.
const COPY_LIMIT: usize = 4096;
/// Largest buffer an idle connection keeps.
const PARKED_BUFFER_LIMIT: usize = 2 * READ_RESERVE;
/// Most header positions an idle connection keeps room for.
const PARKED_SPANS_LIMIT: usize = 32;
/// Maximum length of a chunk-size line or a trailer line.
const MAX_LINE_BYTES: usize = 4096;
/// Maximum size of the trailers after the last chunk.
const MAX_TRAILER_BYTES: usize = 16 * 1024;

/// One upstream connection: the socket, what was read from it but not
/// yet consumed, and room to encode request heads in.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    spans: Vec<Span>,
}

/// The failure of an exchange.
#[derive(Debug)]
pub enum ExchangeError {
    /// Nothing came back: the write failed (`unsent`), or the upstream
    /// closed or reset the connection before the first byte of a
    /// response. On a reused connection this is usually an upstream that
    /// closed it while it sat idle, and another connection may succeed.
    Stale { unsent: bool, detail: String },
    /// The upstream responded, but the response is invalid.
    Failed(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Stale { detail, .. } | ExchangeError::Failed(detail) => {
                f.write_str(detail)
            }
        }
    }
}

impl Conn {
    pub fn new(stream: TcpStream) -> Conn {
        Conn {
            stream,
            buf: BytesMut::new(),
            out: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// Returns whether an idle connection can take a request: the
    /// upstream has neither closed it nor sent anything unasked. Costs no
    /// system call while the socket is known not to be readable.
    pub fn is_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
    }

    /// Prepares the connection to wait in the pool. Buffers of the usual
    /// size stay, so the next request reads and writes without allocating.
    /// Larger ones, left by a large response, are freed.
    pub fn park(&mut self) {
        if self.buf.capacity() > PARKED_BUFFER_LIMIT {
            self.buf = BytesMut::new();
        }
        if self.out.capacity() > PARKED_BUFFER_LIMIT {
            self.out = Vec::new();
        }
        if self.spans.capacity() > PARKED_SPANS_LIMIT {
            self.spans = Vec::new();
        }
    }

    /// Sends the head of `request` (a request without a body, its URI in
    /// origin form) and reads the response head. Informational responses
    /// other than 101 are skipped.
    ///
    /// Returns an `async move` block, not an `async fn`, for the reason
    /// given at [`crate::pipeline::handle`].
    #[inline(always)]
    #[allow(clippy::manual_async_fn)]
    pub fn exchange<'a>(
        mut self,
        request: &'a Parts,
        added: Option<&'a Added<'_>>,
    ) -> impl Future<Output = Result<(Response<()>, ResponseBody), ExchangeError>> + 'a {
        async move {
            let method = &request.method;
            self.out.clear();
            encode_head(request, added, &mut self.out);
            if let Err(error) = self.stream.write_all(&self.out).await {
                return Err(ExchangeError::Stale {
                    unsent: true,
                    detail: format!("cannot send the request: {error}"),
                });
            }
            let mut received = false;
            loop {
                let parsed =
                    parse_head(&mut self.buf, &mut self.spans).map_err(ExchangeError::Failed)?;
                if let Some(parsed) = parsed {
                    if is_interim(parsed.status) {
                        continue;
                    }
                    return finish_head(self, parsed, method);
                }
                if self.buf.len() >= MAX_HEAD_BYTES {
                    return Err(ExchangeError::Failed(format!(
                        "response head larger than {} KiB",
                        MAX_HEAD_BYTES / 1024
                    )));
                }
                self.buf.reserve(READ_RESERVE);
                let read = tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut self.buf).await;
                match read {
                    Ok(0) if !received => {
                        return Err(ExchangeError::Stale {
                            unsent: false,
                            detail: "the upstream closed the connection without a response".into(),
                        });
                    }
                    Ok(0) => {
                        return Err(ExchangeError::Failed(
                            "the upstream closed the connection in the middle of the response head"
                                .into(),
                        ));
                    }
                    Ok(_) => received = true,
                    Err(error) if !received => {
                        return Err(ExchangeError::Stale {
                            unsent: false,
                            detail: format!("reading the response failed: {error}"),
                        });
                    }
                    Err(error) => {
                        return Err(ExchangeError::Failed(format!(
                            "reading the response head failed: {error}"
                        )));
                    }
                }
            }
        }
    }
}

/// Returns whether `status` is an interim response that a final one
/// follows: any 1xx but 101, which switches protocols.
fn is_interim(status: StatusCode) -> bool {
    status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS
}

/// A parsed response head.
struct Head {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    /// The fields that framing reads, as far as present: noted while
    /// parsing, so that framing looks up only those.
    seen: Seen,
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    connection: bool,
    content_length: bool,
    transfer_encoding: bool,
}

/// Start and end offsets of a header's name and value in a response head.
type Span = (usize, usize, usize, usize);

/// Parses a complete response head at the start of `buf` and removes it.
/// Returns `None` while the head is incomplete. `spans` is scratch room,
/// kept by the caller so that each head does not clear a large array.
fn parse_head(buf: &mut BytesMut, spans: &mut Vec<Span>) -> Result<Option<Head>, String> {
    // Offsets into `buf` of each name and value; the values become slices
    // of the head without a copy.
    spans.clear();
    let (length, code, minor) = {
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut fields,
        );
        let length = match parsed {
            Ok(httparse::Status::Complete(length)) => length,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(error) => return Err(format!("malformed response head: {error}")),
        };
        let base = buf.as_ptr() as usize;
        spans.extend(response.headers.iter().map(|field| {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            (
                name,
                name + field.name.len(),
                value,
                value + field.value.len(),
            )
        }));
        (
            length,
            response.code.unwrap_or(0),
            response.version.unwrap_or(1),
        )
    };
    let count = spans.len();
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status code {code}"))?;
    let head = buf.split_to(length).freeze();
    // One more than the upstream sent: the pipeline adds `X-Request-Id`,
    // and a full map would be copied into a larger one for it.
    let mut headers = HeaderMap::with_capacity(count + 1);
    let mut seen = Seen::default();
    for &(name_start, name_end, value_start, value_end) in spans.iter() {
        let name = HeaderName::from_bytes(&head[name_start..name_end])
            .map_err(|_| "invalid header name in the response".to_string())?;
        seen.connection |= name == CONNECTION;
        seen.content_length |= name == CONTENT_LENGTH;
        seen.transfer_encoding |= name == TRANSFER_ENCODING;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| format!("invalid value of response header {name}"))?;
        headers.append(name, value);
    }
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    Ok(Some(Head {
        status,
        version,
        headers,
        seen,
    }))
}

/// The framing of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn framing(method: &Method, head: &Head) -> Result<Framing, String> {
    let (status, headers) = (head.status, &head.headers);
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if head.seen.transfer_encoding {
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
            .map(|coding| coding.trim_ascii())
            .rfind(|coding| !coding.is_empty());
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    if !head.seen.content_length {
        return Ok(Framing::UntilClose);
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for token in value.as_bytes().split(|&byte| byte == b',') {
            let parsed = std::str::from_utf8(token.trim_ascii())
                .ok()
                .filter(|text| !text.is_empty() && text.bytes().all(|byte| byte.is_ascii_digit()))
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| "invalid Content-Length in the response".to_string())?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err("conflicting Content-Length values in the response".to_string());
            }
            length = Some(parsed);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// Decides how the body of the response to a `method` request is framed
/// and whether the connection may carry another request afterwards. A
/// Content-Length next to Transfer-Encoding is removed: the coding frames
/// the body, and the length would announce a wrong size to the client
/// (RFC 9112, section 6.3).
fn frame(method: &Method, head: &mut Head) -> Result<(Framing, bool), String> {
    let framing = framing(method, head)?;
    let both = head.seen.transfer_encoding
        && head.seen.content_length
        && head.headers.remove(CONTENT_LENGTH).is_some();
    // Both headers: a message another intermediary may have read with
    // the other framing, so the connection is not trusted further.
    let keeps_alive =
        super::headers::keeps_alive_noted(head.version, &head.headers, head.seen.connection);
    let reusable = keeps_alive
        && framing != Framing::UntilClose
        && head.status != StatusCode::SWITCHING_PROTOCOLS
        && !both;
    Ok((framing, reusable))
}

fn finish_head(
    conn: Conn,
    mut head: Head,
    method: &Method,
) -> Result<(Response<()>, ResponseBody), ExchangeError> {
    let (framing, reusable) = frame(method, &mut head).map_err(ExchangeError::Failed)?;
    let mut response = Response::new(());
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    let state = match framing {
        Framing::Empty => State::Done,
        Framing::Length(0) => State::Done,
        Framing::Length(remaining) => State::Length { remaining },
        Framing::Chunked => State::Chunked(Chunk::Size),
        Framing::UntilClose => State::UntilClose,
    };
    let mut body = ResponseBody {
        conn: Some(conn),
        state,
        reusable,
        ready: None,
    };
    body.take_buffered();
    Ok((response, body))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length { remaining: u64 },
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes to come.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk, reading trailer lines (dropped) until an
    /// empty one; the count is the trailer bytes so far.
    Trailers(usize),
}

/// The body of a response on a bare connection. Once the body has ended
/// and the connection can carry another request, [`ResponseBody::reusable`]
/// hands the connection back. The connection is present in every state
/// but `Done`.
pub struct ResponseBody {
    conn: Option<Conn>,
    state: State,
    reusable: bool,
    /// The whole body, when it arrived with the head.
    ready: Option<Bytes>,
}

impl ResponseBody {
    /// When the whole body is already buffered (the usual case for a small
    /// response), takes it out so the connection is free at once.
    fn take_buffered(&mut self) {
        if let (State::Length { remaining }, Some(conn)) = (self.state, self.conn.as_mut()) {
            if (conn.buf.len() as u64) < remaining {
                return;
            }
            self.ready = Some(take_data(&mut conn.buf, remaining as usize));
            self.state = State::Done;
        }
        self.settle();
    }

    /// After the body ended: keeps the connection only if it can carry
    /// another request.
    fn settle(&mut self) {
        if self.state != State::Done {
            return;
        }
        let clean = self.conn.as_ref().is_some_and(|conn| conn.buf.is_empty());
        if !(self.reusable && clean) {
            self.conn = None;
        }
    }

    /// Returns whether the body still has its connection, to read the rest
    /// from or to hand back once the body has ended.
    pub fn holds_connection(&self) -> bool {
        self.conn.is_some()
    }

    /// Takes the connection once the body has ended and the connection
    /// can carry another request.
    pub fn reusable(&mut self) -> Option<Conn> {
        if self.state == State::Done {
            self.conn.take()
        } else {
            None
        }
    }

    fn fail(&mut self, detail: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.state = State::Done;
        Poll::Ready(Some(Err(Box::new(io::Error::other(detail)))))
    }
}

/// Reads more from the upstream into the connection's buffer. Returns the
/// number of bytes read, 0 at the end of the connection.
fn poll_fill(conn: &mut Conn, cx: &mut Context<'_>, reserve: usize) -> Poll<io::Result<usize>> {
    conn.buf.reserve(reserve);
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf)
}

/// Room to reserve for reading `remaining` more bytes of body data.
fn reserve_for(remaining: u64) -> usize {
    if remaining > READ_RESERVE as u64 {
        BODY_READ_RESERVE
    } else {
        READ_RESERVE
    }
}

/// Takes `length` bytes of body data from the front of `buf`.
fn take_data(buf: &mut BytesMut, length: usize) -> Bytes {
    if length <= COPY_LIMIT {
        let data = Bytes::copy_from_slice(&buf[..length]);
        buf.advance(length);
        data
    } else {
        buf.split_to(length).freeze()
    }
}

/// Finds the line at the start of `buf`, ended by CRLF or a bare LF (as
/// hyper accepts). Returns the length of its content and the number of
/// bytes it takes with its ending.
fn next_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.iter().position(|&byte| byte == b'\n')?;
    let content = if lf > 0 && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    };
    Some((content, lf + 1))
}

fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .split(|&byte| byte == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    // Leading zeros are allowed; the rest must fit in 64 bits.
    let significant = match digits.iter().position(|&digit| digit != b'0') {
        Some(first) => &digits[first..],
        None => return Some(0),
    };
    let text = std::str::from_utf8(significant).ok()?;
    u64::from_str_radix(text, 16).ok()
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(data) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            if this.state == State::Done {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return this.fail("the upstream connection is gone".to_string());
            };
            let reserve = match this.state {
                State::Done => return Poll::Ready(None),
                State::Length { remaining } => {
                    if !conn.buf.is_empty() {
                        let take = (conn.buf.len() as u64).min(remaining);
                        let data = take_data(&mut conn.buf, take as usize);
                        this.state = match remaining - take {
                            0 => State::Done,
                            remaining => State::Length { remaining },
                        };
                        this.settle();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    reserve_for(remaining)
                }
                State::UntilClose => {
                    if !conn.buf.is_empty() {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    BODY_READ_RESERVE
                }
                State::Chunked(chunk) => match step_chunked(chunk, &mut conn.buf) {
                    Step::Data(data, next) => {
                        this.state = next;
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Step::Next(next) => {
                        this.state = next;
                        this.settle();
                        continue;
                    }
                    Step::Invalid(detail) => return this.fail(detail),
                    Step::NeedMore(reserve) => reserve,
                },
            };
            match ready!(poll_fill(conn, cx, reserve)) {
                Ok(0) if this.state == State::UntilClose => {
                    this.state = State::Done;
                    this.conn = None;
                }
                Ok(0) => {
                    return this.fail(
                        "the upstream closed the connection before the end of the body".to_string(),
                    );
                }
                Ok(_) => {}
                Err(error) => return this.fail(format!("reading the body failed: {error}")),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.state == State::Done
    }

    fn size_hint(&self) -> SizeHint {
        match (self.state, &self.ready) {
            (State::Done, Some(data)) => SizeHint::with_exact(data.len() as u64),
            (State::Done, None) => SizeHint::with_exact(0),
            (State::Length { remaining }, _) => SizeHint::with_exact(remaining),
            _ => SizeHint::default(),
        }
    }
}

/// The result of one step of chunked decoding.
enum Step {
    /// Body data, and the state after it.
    Data(Bytes, State),
    /// No data; go on in this state.
    Next(State),
    /// The buffer contains too little, so read with this much room.
    NeedMore(usize),
    Invalid(String),
}

fn step_chunked(chunk: Chunk, buf: &mut BytesMut) -> Step {
    match chunk {
        Chunk::Size => {
            let Some((content, taken)) = next_line(buf) else {
                if buf.len() > MAX_LINE_BYTES {
                    return Step::Invalid("chunk-size line too long".to_string());
                }
                return Step::NeedMore(READ_RESERVE);
            };
            let Some(size) = chunk_size(&buf[..content]) else {
                return Step::Invalid("invalid chunk size in the response body".to_string());
            };
            buf.advance(taken);
            Step::Next(State::Chunked(if size == 0 {
                Chunk::Trailers(0)
            } else {
                Chunk::Data(size)
            }))
        }
        Chunk::Data(remaining) => {
            if buf.is_empty() {
                return Step::NeedMore(reserve_for(remaining));
            }
            let take = (buf.len() as u64).min(remaining);
            let data = take_data(buf, take as usize);
            let next = match remaining - take {
                0 => Chunk::DataEnd,
                remaining => Chunk::Data(remaining),
            };
            Step::Data(data, State::Chunked(next))
        }
        Chunk::DataEnd => {
            let ending = match (buf.first(), buf.get(1)) {
                (None, _) | (Some(b'\r'), None) => return Step::NeedMore(READ_RESERVE),
                (Some(b'\n'), _) => 1,
                (Some(b'\r'), Some(b'\n')) => 2,
                _ => return Step::Invalid("chunk data not followed by a line end".to_string()),
            };
            buf.advance(ending);
            Step::Next(State::Chunked(Chunk::Size))
        }
        Chunk::Trailers(seen) => {
            let Some((content, taken)) = next_line(buf) else {
                if buf.len() > MAX_LINE_BYTES {
                    return Step::Invalid("trailer line too long".to_string());
                }
                return Step::NeedMore(READ_RESERVE);
            };
            buf.advance(taken);
            if content == 0 {
                return Step::Next(State::Done);
            }
            let seen = seen + taken;
            if seen > MAX_TRAILER_BYTES {
                return Step::Invalid("trailers too large".to_string());
            }
            Step::Next(State::Chunked(Chunk::Trailers(seen)))
        }
    }
}

/// A response decoded from bytes alone: what the fuzz target checks.
#[derive(Debug)]
pub struct Decoded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Whether the connection could carry another request afterwards.
    pub reusable: bool,
}

/// Decodes the response to a `method` request in `bytes`, with the same
/// head parsing, framing and chunked decoding as a connection uses, as
/// if the upstream closed the connection after the last byte. Returns
/// `None` when the bytes end inside the head.
pub fn decode(bytes: &[u8], method: &Method) -> Result<Option<Decoded>, String> {
    let mut buf = BytesMut::from(bytes);
    let mut spans = Vec::new();
    let head = loop {
        let Some(head) = parse_head(&mut buf, &mut spans)? else {
            return Ok(None);
        };
        if !is_interim(head.status) {
            break head;
        }
    };
    let mut head = head;
    let (framing, mut reusable) = frame(method, &mut head)?;
    let mut body = Vec::new();
    match framing {
        Framing::Empty => {}
        Framing::Length(length) => {
            if (buf.len() as u64) < length {
                return Err("the upstream closed the connection before the end of the body".into());
            }
            body.extend_from_slice(&take_data(&mut buf, length as usize));
        }
        Framing::UntilClose => body.extend_from_slice(&buf.split()),
        Framing::Chunked => {
            let mut state = State::Chunked(Chunk::Size);
            while let State::Chunked(chunk) = state {
                state = match step_chunked(chunk, &mut buf) {
                    Step::Data(data, next) => {
                        body.extend_from_slice(&data);
                        next
                    }
                    Step::Next(next) => next,
                    Step::NeedMore(_) => {
                        return Err("the upstream closed the connection in a chunked body".into());
                    }
                    Step::Invalid(detail) => return Err(detail),
                };
            }
        }
    }
    reusable &= buf.is_empty();
    Ok(Some(Decoded {
        status: head.status,
        headers: head.headers,
        body,
        reusable,
    }))
}

/// Writes the head of `parts` (a request without a body, its URI in
/// origin form), with the `added` headers after its own, into `out`.
pub fn encode_head(parts: &Parts, added: Option<&Added<'_>>, out: &mut Vec<u8>) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts
        .uri
        .path_and_query()
        .map_or("/", |path_and_query| path_and_query.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        write_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(added) = added {
        added.write(out);
    }
    // A body-bearing method without a body is sent with an explicit
    // zero length, as hyper's client does.
    let expects_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    if expects_body && !parts.headers.contains_key(CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A reply piece that makes the scripted upstream close the
    /// connection.
    const CLOSE: &[u8] = b"\0close";

    /// Reads from `stream` until `pending` contains a whole request head,
    /// then removes and returns it. Returns `None` once the peer closed.
    async fn next_head(
        stream: &mut tokio::net::TcpStream,
        pending: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(pending.drain(..end + 4).collect());
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(read) => pending.extend_from_slice(&chunk[..read]),
            }
        }
    }

    /// Starts a loopback upstream that responds to each request head it
    /// reads with the next scripted reply, in the pieces the reply is
    /// split into. An empty reply closes the connection without a
    /// response.
    pub(crate) async fn scripted(replies: Vec<Vec<&'static [u8]>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let replies = replies.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    while next_head(&mut stream, &mut pending).await.is_some() {
                        let reply = replies.lock().unwrap().pop_front().unwrap_or_default();
                        if reply.is_empty() {
                            return;
                        }
                        for piece in reply {
                            if piece == CLOSE {
                                return;
                            }
                            if stream.write_all(piece).await.is_err() {
                                return;
                            }
                            stream.flush().await.unwrap();
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        }
                    }
                });
            }
        });
        address
    }

    fn get(method: Method) -> Parts {
        let (mut parts, ()) = http::Request::builder()
            .method(method)
            .uri("/page?x=1")
            .header("host", "tenant")
            .body(())
            .unwrap()
            .into_parts();
        parts
            .headers
            .append("x-many", HeaderValue::from_static("a"));
        parts
            .headers
            .append("x-many", HeaderValue::from_static("b"));
        parts
    }

    fn encoded(parts: &Parts) -> String {
        let mut head = Vec::new();
        encode_head(parts, None, &mut head);
        String::from_utf8(head).unwrap()
    }

    async fn exchange_on(
        address: SocketAddr,
        method: Method,
    ) -> Result<(Response<()>, ResponseBody), ExchangeError> {
        let stream = TcpStream::connect(address).await.unwrap();
        Conn::new(stream).exchange(&get(method), None).await
    }

    async fn read_all(body: &mut ResponseBody) -> Result<Vec<u8>, String> {
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| error.to_string())?;
            if let Some(chunk) = frame.data_ref() {
                data.extend_from_slice(chunk);
            }
        }
        Ok(data)
    }

    #[test]
    fn encoded_head_post_zero_length() {
        let head = encoded(&get(Method::GET));
        assert_eq!(
            head,
            "GET /page?x=1 HTTP/1.1\r\nhost: tenant\r\nx-many: a\r\nx-many: b\r\n\r\n"
        );
        let head = encoded(&get(Method::POST));
        assert!(head.ends_with("content-length: 0\r\n\r\n"), "{head}");
    }

    #[tokio::test]
    async fn buffered_body_frees_connection() {
        let address = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Many: 1\r\nX-Many: 2\r\n\r\nhello",
        ]])
        .await;
        let (response, mut body) = exchange_on(address, Method::GET).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let many: Vec<_> = response.headers().get_all("x-many").iter().collect();
        assert_eq!(many, ["1", "2"]);
        assert!(body.reusable().is_some());
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(read_all(&mut body).await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn chunked_body_across_reads_with_extensions_and_trailers() {
        let address = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhel",
            b"lo\r\n",
            b"6\r\n world\r\n0\r\nX-Trailer: t\r\n",
            b"\r\n",
        ]])
        .await;
        let (_, mut body) = exchange_on(address, Method::GET).await.unwrap();
        assert!(body.reusable().is_none());
        assert_eq!(read_all(&mut body).await.unwrap(), b"hello world");
        assert!(body.reusable().is_some());
    }

    #[tokio::test]
    async fn large_body_streams_in_pieces() {
        static BIG: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let big: &'static [u8] =
            BIG.get_or_init(|| (0..100_000u32).map(|i| (i % 251) as u8).collect());
        let address = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n",
            &big[..30_000],
            &big[30_000..],
        ]])
        .await;
        let (_, mut body) = exchange_on(address, Method::GET).await.unwrap();
        assert_eq!(body.size_hint().exact(), Some(100_000));
        assert_eq!(read_all(&mut body).await.unwrap(), big);
        assert!(body.reusable().is_some());
    }

    #[tokio::test]
    async fn close_delimited_body_not_reused() {
        let address = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\n\r\nno length",
            b" given",
            CLOSE,
        ]])
        .await;
        let (_, mut body) = exchange_on(address, Method::GET).await.unwrap();
        assert_eq!(read_all(&mut body).await.unwrap(), b"no length given");
        assert!(body.reusable().is_none());
    }

    #[tokio::test]
    async fn bodiless_answers_keep_the_connection() {
        let address = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"],
            vec![b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"],
            vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
        ])
        .await;
        for (method, status) in [
            (Method::HEAD, StatusCode::OK),
            (Method::GET, StatusCode::NOT_MODIFIED),
            (Method::DELETE, StatusCode::NO_CONTENT),
        ] {
            let (response, mut body) = exchange_on(address, method).await.unwrap();
            assert_eq!(response.status(), status);
            assert!(body.is_end_stream());
            assert!(body.reusable().is_some(), "{status}");
        }
    }

    #[tokio::test]
    async fn informational_answers_are_skipped() {
        let address = scripted(vec![vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]])
        .await;
        let (response, mut body) = exchange_on(address, Method::GET).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("link").is_none());
        assert_eq!(read_all(&mut body).await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn connection_close_and_old_versions_end_the_connection() {
        let address = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"],
            vec![b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"],
            vec![b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
        ])
        .await;
        for reusable in [false, false, true, false] {
            let (response, mut body) = exchange_on(address, Method::GET).await.unwrap();
            read_all(&mut body).await.unwrap();
            assert_eq!(body.reusable().is_some(), reusable, "{response:?}");
        }
    }

    #[tokio::test]
    async fn broken_answers_are_errors() {
        let address = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"],
            vec![b"HTTP/1.1 2x0 Odd\r\nContent-Length: 0\r\n\r\n"],
        ])
        .await;
        for _ in 0..4 {
            assert!(matches!(
                exchange_on(address, Method::GET).await,
                Err(ExchangeError::Failed(_))
            ));
        }
    }

    #[tokio::test]
    async fn broken_bodies_end_with_an_error() {
        let address = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
            vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX"],
        ])
        .await;
        for _ in 0..2 {
            let (_, mut body) = exchange_on(address, Method::GET).await.unwrap();
            assert!(read_all(&mut body).await.is_err());
            assert!(body.reusable().is_none());
        }
    }

    #[tokio::test]
    async fn truncated_body_is_an_error() {
        let address = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            CLOSE,
        ]])
        .await;
        let (_, mut body) = exchange_on(address, Method::GET).await.unwrap();
        let error = read_all(&mut body).await.unwrap_err();
        assert!(error.contains("before the end of the body"), "{error}");
        assert!(body.reusable().is_none());
    }

    async fn send_twice(method: Method) -> Result<StatusCode, String> {
        let address = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            vec![],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        ])
        .await;
        let pool = crate::proxy::pool::Pool::new();
        let mut last = Err(String::new());
        for _ in 0..2 {
            let request = http::Request::builder()
                .method(method.clone())
                .uri("/")
                .body(crate::body::empty())
                .unwrap();
            last = match pool.send(address, request, None, Box::new(())).await {
                Ok(response) => Ok(response.status()),
                Err(error) => Err(format!("{error:?}")),
            };
        }
        last
    }

    #[tokio::test]
    async fn pool_repeats_only_safe_methods() {
        // The second request goes out on the pooled connection, which the
        // upstream closes without a response. A GET is repeated on a new
        // connection, a POST is not.
        assert_eq!(send_twice(Method::GET).await, Ok(StatusCode::OK));
        let post = send_twice(Method::POST).await;
        assert!(
            post.as_ref()
                .is_err_and(|error| error.contains("without a response")),
            "{post:?}"
        );
    }

    #[test]
    fn decode_matches_the_connection_path() {
        let chunked = b"HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 200 OK\r\n\
            Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let decoded = decode(chunked, &Method::GET).unwrap().unwrap();
        assert_eq!(decoded.status, StatusCode::OK);
        assert_eq!(decoded.body, b"abc");
        assert!(decoded.reusable);

        let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n";
        let decoded = decode(extra, &Method::GET).unwrap().unwrap();
        assert_eq!(decoded.body, b"ok");
        assert!(!decoded.reusable);

        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
        let decoded = decode(head, &Method::HEAD).unwrap().unwrap();
        assert!(decoded.body.is_empty());
        assert!(decoded.reusable);

        assert!(
            decode(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
                &Method::GET
            )
            .is_err()
        );
        assert!(
            decode(b"HTTP/1.1 200 OK\r\nConte", &Method::GET)
                .unwrap()
                .is_none()
        );
    }

    /// Starts an upstream that responds after a short pause, so that
    /// concurrent requests open several connections, and counts each
    /// request for `/drop`, closing the connection without a response.
    async fn counting_upstream() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = dropped.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    while let Some(head) = next_head(&mut stream, &mut pending).await {
                        if head.windows(7).any(|w| w == b" /drop ") {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, dropped)
    }

    /// Sends five concurrent GETs (leaving five idle connections), then
    /// one `method` request for `/drop`, which the upstream drops.
    /// Returns how often the upstream received it.
    async fn times_dropped_request_sent(method: Method) -> usize {
        let (address, dropped) = counting_upstream().await;
        let pool = crate::proxy::pool::Pool::new();
        let request = |method: Method, uri: &str| {
            http::Request::builder()
                .method(method)
                .uri(uri)
                .body(crate::body::empty())
                .unwrap()
        };
        let gets = (0..5).map(|_| {
            let pool = pool.clone();
            async move {
                let response = pool
                    .send(address, request(Method::GET, "/"), None, Box::new(()))
                    .await
                    .unwrap();
                response.into_body().collect().await.unwrap();
            }
        });
        futures_util::future::join_all(gets).await;
        let result = pool
            .send(address, request(method, "/drop"), None, Box::new(()))
            .await;
        assert!(result.is_err());
        dropped.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[tokio::test]
    async fn dropped_request_repeated_at_most_once() {
        assert_eq!(times_dropped_request_sent(Method::DELETE).await, 1);
        assert_eq!(times_dropped_request_sent(Method::GET).await, 2);
    }

    #[tokio::test]
    async fn chunked_coding_drops_content_length() {
        // Kept, the length would announce 100 bytes to the client, which
        // would get 5 and a closed connection.
        let address = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ]])
        .await;
        let (response, mut body) = exchange_on(address, Method::GET).await.unwrap();
        assert!(response.headers().get(CONTENT_LENGTH).is_none());
        assert_eq!(read_all(&mut body).await.unwrap(), b"hello");
        assert!(body.reusable().is_none());
    }

    #[test]
    fn chunk_lines_lenient_like_hyper() {
        let zeros = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            00000000000000005\r\nhello\r\n0\r\n\r\n";
        let decoded = decode(zeros, &Method::GET).unwrap().unwrap();
        assert_eq!(decoded.body, b"hello");

        let bare_lf =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\nlf\n0\nX-T: 1\n\r\n";
        let decoded = decode(bare_lf, &Method::GET).unwrap().unwrap();
        assert_eq!(decoded.body, b"lf");
        assert!(decoded.reusable);

        let overflow =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n";
        assert!(decode(overflow, &Method::GET).is_err());
    }

    #[tokio::test]
    async fn silent_close_is_stale() {
        let address = scripted(vec![vec![]]).await;
        let result = exchange_on(address, Method::GET).await;
        assert!(
            matches!(result, Err(ExchangeError::Stale { unsent: false, .. })),
            "{:?}",
            result.err()
        );
    }
}
