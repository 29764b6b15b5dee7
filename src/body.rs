//! The response body type shared by every handler.

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

/// Returns a body with no data.
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}
