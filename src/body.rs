//! The response body type shared by every handler.

use std::fs::{File, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// An error raised while producing a body, which makes hyper abort the
/// response.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A type-erased response body, so handlers that stream, buffer or proxy
/// can return the same type.
pub type Body = BoxBody<Bytes, BoxError>;

/// Returns a body holding `data` in one frame.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Marks a response whose body is the whole content of this open file.
/// The lean HTTP/1 server has the kernel send the file from the page cache
/// (`sendfile`) rather than copy the body into the socket. Other servers
/// write the body.
#[derive(Debug, Clone)]
pub struct WholeFile {
    pub file: Arc<File>,
    /// For log lines.
    pub path: Arc<Path>,
    /// The file's change time when the response was made, to notice a
    /// change while it is sent.
    pub change_time: (i64, i64),
    /// Bytes sent from the file, which the access record adds to those
    /// read from the body.
    pub sent: Arc<AtomicU64>,
}

impl WholeFile {
    pub fn new(file: File, path: &Path, change_time: (i64, i64)) -> WholeFile {
        WholeFile {
            file: Arc::new(file),
            path: Arc::from(path),
            change_time,
            sent: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Returns whether the file's change time is still the one the
    /// response was made for. A failed `fstat` counts as a change.
    pub fn is_unchanged(&self) -> bool {
        self.file
            .metadata()
            .is_ok_and(|metadata| change_time(&metadata) == self.change_time)
    }
}

/// Returns a file's change time (seconds and nanoseconds), which every
/// write and truncation moves.
pub fn change_time(metadata: &Metadata) -> (i64, i64) {
    (metadata.ctime(), metadata.ctime_nsec())
}

/// Returns a body with no data.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The body of a request as the pipeline receives it: hyper's stream, or
/// none at all for a request that [`crate::http1`] read without one.
#[derive(Debug)]
pub enum RequestBody {
    Streamed(hyper::body::Incoming),
    Empty,
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Streamed(body) => std::pin::Pin::new(body).poll_frame(cx),
            RequestBody::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streamed(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RequestBody::Streamed(body) => body.size_hint(),
            RequestBody::Empty => http_body::SizeHint::with_exact(0),
        }
    }
}
