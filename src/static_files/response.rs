//! The HTTP half of a static file response: choosing the representation,
//! evaluating preconditions and ranges, and planning the headers and body.

use std::fs::{File, Metadata};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;
use tracing::warn;

use super::cache;
use super::cache::{Fingerprint, Served};
use super::negotiate::{self, AcceptedEncodings, ByteRange, Comparison, Encoding};
use super::{Lookup, OpenedFile, Probe, is_regular_file, read_exact_len, with_suffix};
use crate::body::{self, Body, BoxError};

/// Bodies up to this size are read into memory in one call; larger ones
/// are streamed, except whole files that the memory cache may keep.
const SMALL_BODY_LIMIT: u64 = 64 * 1024;

/// Read size of a streamed body.
const STREAM_CHUNK_SIZE: usize = 256 * 1024;

/// Characters escaped when a decoded path goes back into a `Location`
/// header: the URL path percent-encode set plus `%`, because the path was
/// decoded once and a literal `%` must not read as an escape. Non-ASCII
/// characters are always escaped.
const LOCATION_PATH_ESCAPES: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

pub(super) enum Outcome {
    Respond(Response<BodySource>),
    AddTrailingSlash,
}

/// A response body described without the async runtime, so the blocking
/// task can plan it and the caller can build it.
pub(super) enum BodySource {
    Empty,
    Bytes(Bytes),
    /// `len` bytes from the current position of `file`.
    File {
        file: File,
        len: u64,
        path: PathBuf,
    },
}

impl BodySource {
    pub(super) fn into_body(self) -> Body {
        match self {
            BodySource::Empty => body::empty(),
            BodySource::Bytes(bytes) => body::full(bytes),
            BodySource::File { file, len, path } => {
                let reader = tokio::fs::File::from_std(file).take(len);
                let frames =
                    ReaderStream::with_capacity(reader, STREAM_CHUNK_SIZE).map(move |chunk| {
                        match chunk {
                            Ok(bytes) => Ok(Frame::data(bytes)),
                            Err(error) => {
                                warn!(
                                    path = %path.display(),
                                    %error,
                                    "reading static file failed mid-response"
                                );
                                Err(BoxError::from(error))
                            }
                        }
                    });
                BodyExt::boxed(StreamBody::new(frames))
            }
        }
    }
}

/// The request headers that shape the response, cloned so the blocking
/// task can own them. Cloning a `HeaderValue` parsed by hyper shares its
/// buffer rather than copying it. Only the first field line of each header
/// is read.
pub(super) struct Conditions {
    head: bool,
    if_match: Option<HeaderValue>,
    if_none_match: Option<HeaderValue>,
    if_modified_since: Option<HeaderValue>,
    if_unmodified_since: Option<HeaderValue>,
    if_range: Option<HeaderValue>,
    range: Option<HeaderValue>,
    accept_encoding: Option<HeaderValue>,
}

impl Conditions {
    pub(super) fn from_request(request: &Parts, head: bool) -> Conditions {
        let get = |name: HeaderName| request.headers.get(name).cloned();
        Conditions {
            head,
            if_match: get(header::IF_MATCH),
            if_none_match: get(header::IF_NONE_MATCH),
            if_modified_since: get(header::IF_MODIFIED_SINCE),
            if_unmodified_since: get(header::IF_UNMODIFIED_SINCE),
            if_range: get(header::IF_RANGE),
            range: get(header::RANGE),
            accept_encoding: get(header::ACCEPT_ENCODING),
        }
    }
}

/// The chosen representation with its validators, shared by every status
/// code the response can have.
pub(super) struct Representation {
    opened: OpenedFile,
    /// The file the client asked for, which names the content type.
    requested: PathBuf,
    /// The precompressed sibling served in place of `requested`, if any.
    sibling: Option<(Encoding, PathBuf)>,
    /// Whether a precompressed sibling exists, so the response depends on
    /// `Accept-Encoding`.
    vary: bool,
    etag: HeaderValue,
    /// In whole seconds since the Unix epoch.
    modified_secs: Option<u64>,
    last_modified: Option<HeaderValue>,
}

impl Representation {
    /// The file and version to cache the response under, when the
    /// response cannot depend on `Accept-Encoding`.
    pub(super) fn served(&self) -> Option<Served> {
        (!self.vary).then(|| Served {
            path: self.requested.clone(),
            fingerprint: Fingerprint::of(&self.opened.metadata),
        })
    }
}

impl Lookup {
    /// Picks the precompressed sibling the client prefers, if one exists,
    /// else the file itself. Both siblings are looked up even when the
    /// client accepts neither, because the response carries `Vary` whenever
    /// a sibling exists.
    pub(super) fn choose_representation(
        &self,
        opened: OpenedFile,
        requested: PathBuf,
    ) -> Option<Representation> {
        let accepted = AcceptedEncodings::parse(
            self.conditions
                .accept_encoding
                .as_ref()
                .map(|v| v.as_bytes()),
        );
        let mut vary = false;
        let mut chosen = None;
        for encoding in accepted.by_preference() {
            let sibling = with_suffix(&requested, encoding.file_suffix());
            if !is_regular_file(&sibling) {
                continue;
            }
            vary = true;
            if !accepted.accepts(encoding) {
                continue;
            }
            if let Probe::File(sibling_file) = self.settings.probe(&sibling) {
                chosen = Some((sibling_file, sibling, encoding));
                break;
            }
        }

        let (opened, sibling) = match chosen {
            Some((file, path, encoding)) => (file, Some((encoding, path))),
            None => (opened, None),
        };
        let encoding = sibling.as_ref().map(|(encoding, _)| *encoding);
        let modified = opened.metadata.modified().ok();
        Some(Representation {
            etag: entity_tag(&opened.metadata, encoding)?,
            modified_secs: modified.map(negotiate::unix_secs),
            last_modified: modified
                .and_then(|time| HeaderValue::try_from(httpdate::fmt_http_date(time)).ok()),
            opened,
            requested,
            sibling,
            vary,
        })
    }

    /// Evaluates the preconditions in the order of RFC 9110 section 13.2.2,
    /// then the range, and plans the response.
    pub(super) fn respond(self, representation: Representation) -> Option<Response<BodySource>> {
        let conditions = &self.conditions;
        let etag = representation.etag.as_bytes();
        let modified = representation.modified_secs;

        let precondition_failed = match (&conditions.if_match, &conditions.if_unmodified_since) {
            (Some(list), _) => {
                !negotiate::etag_list_matches(list.as_bytes(), etag, Comparison::Strong)
            }
            (None, Some(date)) => match (negotiate::parse_date_secs(date.as_bytes()), modified) {
                (Some(since), Some(modified)) => modified > since,
                _ => false,
            },
            (None, None) => false,
        };
        if precondition_failed {
            return Some(empty_response(StatusCode::PRECONDITION_FAILED));
        }

        let not_modified = match (&conditions.if_none_match, &conditions.if_modified_since) {
            (Some(list), _) => {
                negotiate::etag_list_matches(list.as_bytes(), etag, Comparison::Weak)
            }
            (None, Some(date)) => {
                match (negotiate::parse_date_secs(date.as_bytes()), modified) {
                    // RFC 9110 section 13.1.3: a date later than the
                    // server's clock is invalid and ignored.
                    (Some(since), Some(modified)) => {
                        modified <= since && since <= negotiate::unix_secs(SystemTime::now())
                    }
                    _ => false,
                }
            }
            (None, None) => false,
        };
        if not_modified {
            let mut response = Response::new(BodySource::Empty);
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            self.insert_validators(response.headers_mut(), &representation);
            return Some(response);
        }

        let len = representation.opened.metadata.len();
        let range = self.requested_range(&representation, len);
        let (status, start, body_len) = match range {
            ByteRange::Whole => (StatusCode::OK, 0, len),
            ByteRange::Partial { start, end } => {
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            ByteRange::Unsatisfiable => {
                let mut response = empty_response(StatusCode::RANGE_NOT_SATISFIABLE);
                let headers = response.headers_mut();
                headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
                headers.insert(
                    header::CONTENT_RANGE,
                    HeaderValue::try_from(format!("bytes */{len}")).ok()?,
                );
                return Some(response);
            }
        };

        let mut headers = HeaderMap::with_capacity(10);
        self.insert_validators(&mut headers, &representation);
        headers.insert(
            header::CONTENT_TYPE,
            content_type(&representation.requested),
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some((encoding, _)) = &representation.sibling {
            headers.insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(encoding.token()),
            );
        }
        if let ByteRange::Partial { start, end } = range {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::try_from(format!("bytes {start}-{end}/{len}")).ok()?,
            );
        }

        let body = if conditions.head {
            BodySource::Empty
        } else {
            // A whole plain file may go to the memory cache, which keeps
            // only bodies read into memory.
            let whole_file = matches!(range, ByteRange::Whole) && representation.sibling.is_none();
            let read_limit = if whole_file {
                cache::MAX_FILE_BYTES as u64
            } else {
                SMALL_BODY_LIMIT
            };
            let path = match representation.sibling {
                Some((_, sibling)) => sibling,
                None => representation.requested,
            };
            read_body(
                representation.opened.file,
                path,
                start,
                body_len,
                read_limit,
            )?
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Some(response)
    }

    /// Returns the range to serve. Ranges are defined for GET only (RFC
    /// 9110 section 14.2), so HEAD gets the whole file's headers, and an
    /// `If-Range` that does not match the current validator also means the
    /// whole file.
    fn requested_range(&self, representation: &Representation, len: u64) -> ByteRange {
        let conditions = &self.conditions;
        let Some(range) = conditions.range.as_ref().filter(|_| !conditions.head) else {
            return ByteRange::Whole;
        };
        if let Some(validator) = &conditions.if_range {
            let validator = validator.as_bytes().trim_ascii();
            let is_entity_tag = validator.starts_with(b"\"") || validator.starts_with(b"W/");
            let matches = if is_entity_tag {
                negotiate::etag_matches(
                    validator,
                    representation.etag.as_bytes(),
                    Comparison::Strong,
                )
            } else {
                let since = negotiate::parse_date_secs(validator);
                since.is_some() && since == representation.modified_secs
            };
            if !matches {
                return ByteRange::Whole;
            }
        }
        negotiate::parse_range(range.as_bytes(), len)
    }

    fn insert_validators(&self, headers: &mut HeaderMap, representation: &Representation) {
        headers.insert(header::ETAG, representation.etag.clone());
        if let Some(last_modified) = &representation.last_modified {
            headers.insert(header::LAST_MODIFIED, last_modified.clone());
        }
        if let Some(cache_control) = &self.cache_control {
            headers.insert(header::CACHE_CONTROL, cache_control.clone());
        }
        if representation.vary {
            headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        }
    }
}

/// Plans the body of `len` bytes starting at `start`: read now when at
/// most `read_limit` bytes, else streamed from the open file.
fn read_body(
    mut file: File,
    path: PathBuf,
    start: u64,
    len: u64,
    read_limit: u64,
) -> Option<BodySource> {
    if start > 0 {
        if let Err(error) = file.seek(SeekFrom::Start(start)) {
            warn!(path = %path.display(), %error, "seeking in static file failed");
            return None;
        }
    }
    if len <= read_limit {
        let bytes = read_exact_len(&mut file, len, &path)?;
        return Some(BodySource::Bytes(Bytes::from(bytes)));
    }
    Some(BodySource::File { file, len, path })
}

/// Returns a strong entity tag built from the modification time and size,
/// plus the coding for a precompressed sibling, so every representation of
/// a path has its own tag.
fn entity_tag(metadata: &Metadata, encoding: Option<Encoding>) -> Option<HeaderValue> {
    let coding = match encoding {
        Some(Encoding::Brotli) => "-br",
        Some(Encoding::Gzip) => "-gz",
        None => "",
    };
    let text = format!(
        "\"{:x}.{:x}-{:x}{coding}\"",
        metadata.mtime(),
        metadata.mtime_nsec(),
        metadata.len()
    );
    HeaderValue::try_from(text).ok()
}

/// Returns the content type for a file name, with `charset=utf-8` on text
/// types. The common types are static strings, so only rare text types
/// allocate.
fn content_type(path: &Path) -> HeaderValue {
    let essence = mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream");
    let with_charset = match essence {
        "text/html" => "text/html; charset=utf-8",
        "text/css" => "text/css; charset=utf-8",
        "text/javascript" => "text/javascript; charset=utf-8",
        "application/javascript" => "application/javascript; charset=utf-8",
        "application/json" => "application/json; charset=utf-8",
        "text/plain" => "text/plain; charset=utf-8",
        "text/xml" => "text/xml; charset=utf-8",
        _ => {
            // The table of mime_guess 2.0.5 contains only visible ASCII, so
            // `from_static` cannot panic here.
            let textual = essence.starts_with("text/") || essence.ends_with("+json");
            if !textual {
                return HeaderValue::from_static(essence);
            }
            return HeaderValue::try_from(format!("{essence}; charset=utf-8"))
                .unwrap_or_else(|_| HeaderValue::from_static(essence));
        }
    };
    HeaderValue::from_static(with_charset)
}

fn empty_response(status: StatusCode) -> Response<BodySource> {
    let mut response = Response::new(BodySource::Empty);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    response
}

/// Builds a 301 response to `path` plus `/`, keeping the query. `path` was decoded
/// once, so it is percent-encoded again for the `Location` header.
pub(super) fn redirect_to_directory(path: &str, query: Option<&str>) -> Option<Response<Body>> {
    // A `Location` starting with `//` would name another host. Canonical
    // paths never start that way, and this guards callers that skip it.
    if path.starts_with("//") {
        return None;
    }
    let mut location: String = utf8_percent_encode(path, LOCATION_PATH_ESCAPES).collect();
    location.push('/');
    if let Some(query) = query {
        location.push('?');
        location.push_str(query);
    }

    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::MOVED_PERMANENTLY;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::try_from(location).ok()?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    Some(response)
}
