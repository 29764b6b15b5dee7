//! Forwarding a request to an upstream (a tenant process on loopback) over
//! a pooled HTTP/1.1 client, and WebSocket upgrades as raw tunnels.

pub mod bare;
pub mod headers;
pub mod pool;
pub mod timeout;

use std::any::Any;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::{debug, warn};

use crate::body::{Body, BoxError, RequestBody};
pub use headers::Forwarding;

/// The upstream client: a pool of connections that the requests drive
/// themselves for upstreams at IP addresses (tenants above all), and
/// hyper's pooled client for names to resolve and WebSocket upgrades.
#[derive(Clone)]
pub struct Client {
    general: LegacyClient<HttpConnector, Body>,
    direct: pool::Pool,
}

/// Something kept alive while a response body streams or a tunnel is open:
/// a tenant lease, a WebSocket activity counter.
pub type Guard = Box<dyn Any + Send + Sync>;

/// Builds the pooled client used for every tenant.
pub fn new_client() -> Client {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let general = LegacyClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .retry_canceled_requests(true)
        .set_host(false)
        .build(connector);
    Client {
        general,
        direct: pool::Pool::new(),
    }
}

#[derive(Debug)]
pub enum ProxyError {
    /// Nothing accepted the connection: the upstream is down.
    Connect(String),
    /// The upstream accepted but failed before sending a response head.
    Upstream(String),
    /// The upstream sent no response head within the response timeout.
    Timeout(timeout::TimedOut),
    /// The request cannot be expressed as an upstream URI.
    InvalidTarget(String),
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyError::Connect(e) => write!(f, "connect failed: {e}"),
            ProxyError::Upstream(e) => write!(f, "upstream failed: {e}"),
            ProxyError::Timeout(e) => write!(f, "upstream timed out: {e}"),
            ProxyError::InvalidTarget(e) => write!(f, "invalid upstream target: {e}"),
        }
    }
}

impl std::error::Error for ProxyError {}

/// The destination of a forwarded request.
pub enum Upstream {
    /// A socket address, such as a tenant's loopback port.
    Address(SocketAddr),
    /// A name or address with its scheme, as a URI writes it.
    Named(Scheme, Authority),
}

/// One request to forward.
pub struct Forward<'a> {
    pub upstream: Upstream,
    /// Path and query sent upstream.
    pub path_and_query: PathAndQuery,
    pub forwarding: Forwarding,
    pub request_id: &'a HeaderValue,
    /// Whether the request is a WebSocket upgrade
    /// ([`headers::is_websocket_upgrade`]), which the caller has checked.
    pub websocket: bool,
    /// Kept until the response body ends, or the tunnel closes.
    pub guard: Guard,
    /// The longest silence of the upstream before the response head and
    /// between body chunks (see [`timeout`]); `None` waits without limit.
    pub response_timeout: Option<Duration>,
}

/// Sends `request` upstream and returns the upstream's response. When the
/// upstream accepts a WebSocket upgrade with 101, a tunnel task copies
/// bytes both ways until either side closes.
/// Returns an `async move` block, not an `async fn`, for the reason
/// given at [`crate::pipeline::handle`].
#[inline(always)]
pub fn forward<'a>(
    client: &'a Client,
    mut request: Request<RequestBody>,
    target: Forward<'a>,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + 'a {
    let websocket = target.websocket;
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));

    let (mut parts, body) = request.into_parts();
    let host = parts.headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    async move {
        let added = headers::strip_request(
            &mut parts.headers,
            host.as_ref(),
            target.forwarding,
            target.request_id,
            websocket,
        );

        parts.version = Version::HTTP_11;

        // An upstream at an IP address needs no name resolution: the request
        // drives a pooled connection itself. Upgrades need hyper's client,
        // which hands the upgraded connection over.
        let direct = match &target.upstream {
            _ if websocket => None,
            Upstream::Address(address) => Some(*address),
            Upstream::Named(_, authority) => authority.as_str().parse::<SocketAddr>().ok(),
        };
        if let Some(address) = direct {
            parts.uri = Uri::from(target.path_and_query);
            let (body, progress) = request_body(body, &parts.extensions, target.response_timeout);
            // Pinned in place: the wrappers below borrow it rather than hold
            // copies of a large future. On a timeout the pending send is
            // dropped, and the lease with it.
            let pending = std::pin::pin!(client.direct.send(
                address,
                Request::from_parts(parts, body),
                Some(&added),
                target.guard
            ));
            let response =
                await_head(pending, target.response_timeout, progress.as_deref()).await??;
            reject_unrequested_switch(&response)?;
            let (mut parts, body) = response.into_parts();
            headers::prepare_response(&mut parts.headers, false);
            let body = limit_gaps(
                body,
                target.response_timeout,
                timeout::UpstreamName::Address(address),
                target.request_id,
            );
            return Ok(Response::from_parts(parts, body));
        }

        added.insert_into(&mut parts.headers);
        let (scheme, authority) = match target.upstream {
            Upstream::Named(scheme, authority) => (scheme, authority),
            Upstream::Address(address) => (
                Scheme::HTTP,
                Authority::try_from(address.to_string())
                    .map_err(|e| ProxyError::InvalidTarget(format!("{address}: {e}")))?,
            ),
        };
        parts.uri = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(target.path_and_query)
            .build()
            .map_err(|e| ProxyError::InvalidTarget(e.to_string()))?;

        let (body, progress) = if websocket {
            (crate::body::empty(), None)
        } else {
            request_body(body, &parts.extensions, target.response_timeout)
        };

        let upstream = parts
            .uri
            .authority()
            .map(|authority| authority.to_string())
            .unwrap_or_default();
        let pending = std::pin::pin!(client.general.request(Request::from_parts(parts, body)));
        let result = await_head(pending, target.response_timeout, progress.as_deref()).await?;
        let mut response = result.map_err(|error| {
            let detail = error_chain(&error);
            if error.is_connect() {
                ProxyError::Connect(detail)
            } else {
                ProxyError::Upstream(detail)
            }
        })?;

        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if client_upgrade.is_none() {
            reject_unrequested_switch(&response)?;
        }
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let guard = target.guard;
            tokio::spawn(async move {
                run_tunnel(client_upgrade, upstream_upgrade).await;
                drop(guard);
            });
            let (mut parts, _) = response.into_parts();
            headers::prepare_response(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, crate::body::empty()));
        }

        let (mut parts, body) = response.into_parts();
        headers::prepare_response(&mut parts.headers, false);
        let body = GuardedBody {
            inner: body,
            _guard: target.guard,
        };
        let body = limit_gaps(
            body,
            target.response_timeout,
            timeout::UpstreamName::Authority(upstream),
            target.request_id,
        );
        Ok(Response::from_parts(parts, body))
    }
}

/// Prepares the request body to send upstream: held to the body limit,
/// and with a response timeout, tracked so that forwarded chunks count as
/// progress. A request without a body needs neither.
fn request_body(
    body: RequestBody,
    extensions: &http::Extensions,
    response_timeout: Option<Duration>,
) -> (Body, Option<std::sync::Arc<timeout::Progress>>) {
    if body.is_end_stream() {
        return (crate::body::empty(), None);
    }
    let body = crate::limits::limit_request_body(body, extensions);
    match response_timeout {
        Some(_) => {
            let progress = timeout::Progress::new();
            (
                timeout::track_request_body(body, progress.clone()),
                Some(progress),
            )
        }
        None => (body, None),
    }
}

/// Waits for the upstream's response head, within `limit` of silence when
/// a response timeout is set (see [`timeout::wait_for_response`]).
async fn await_head<F: Future>(
    pending: Pin<&mut F>,
    limit: Option<Duration>,
    progress: Option<&timeout::Progress>,
) -> Result<F::Output, ProxyError> {
    match limit {
        Some(limit) => timeout::wait_for_response(pending, limit, progress)
            .await
            .map_err(ProxyError::Timeout),
        None => Ok(pending.await),
    }
}

/// Boxes a response body, ending it when the upstream stays silent for
/// longer than `limit` between chunks, when a response timeout is set.
fn limit_gaps<B>(
    body: B,
    limit: Option<Duration>,
    upstream: timeout::UpstreamName,
    request_id: &HeaderValue,
) -> Body
where
    B: HttpBody<Data = Bytes, Error = BoxError> + Send + Sync + Unpin + 'static,
{
    match limit {
        Some(limit) => timeout::limit_response_gaps(body, limit, upstream, request_id.clone()),
        None => body.boxed(),
    }
}

/// Copies bytes both ways between an upgraded client connection and an
/// upgraded upstream connection until either side closes.
pub(crate) async fn run_tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(error) => {
            warn!(error = %error, "WebSocket upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => debug!(sent, received, "WebSocket tunnel closed"),
        Err(error) => debug!(error = %error, "WebSocket tunnel ended with an error"),
    }
}

/// Rejects a 101 response to a request sent without an upgrade, because
/// the client cannot switch protocols it never requested.
fn reject_unrequested_switch<B>(response: &Response<B>) -> Result<(), ProxyError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::Upstream(
            "the upstream switched protocols on a request without an upgrade".into(),
        ));
    }
    Ok(())
}

/// Formats the error and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An upstream response body that keeps a guard alive until it is
/// finished or dropped, so a lease covers the whole response.
struct GuardedBody {
    inner: Incoming,
    _guard: Guard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrequested_switch_is_upstream_error() {
        let switch = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .body(())
            .unwrap();
        assert!(matches!(
            reject_unrequested_switch(&switch),
            Err(ProxyError::Upstream(_))
        ));
        let ok = Response::new(());
        assert!(reject_unrequested_switch(&ok).is_ok());
    }
}
