//! Responses navigator writes itself: error pages, redirects and the
//! maintenance page.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// Builds a short plain-text response, e.g. `400 Bad Request: invalid path`.
pub fn text(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(body::full(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, TEXT);
    response.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    response
}

/// Builds the response to a request whose body failed while it was being
/// sent upstream: 413 when it exceeded the limit, else 400.
pub fn body_failed(status: StatusCode) -> Response<Body> {
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "413 the request body is larger than this server accepts"
    } else {
        "400 the request body could not be read"
    };
    text(status, message)
}

/// Builds a small HTML error page with a title and one explanatory sentence.
pub fn error_page(status: StatusCode, detail: &str) -> Response<Body> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{code} {reason}</title></head>\n\
         <body><h1>{code} {reason}</h1><p>{detail}</p></body></html>\n",
        code = status.as_u16(),
        detail = escape_html(detail),
    );
    let mut response = Response::new(body::full(html));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HTML);
    response.headers_mut().insert(CACHE_CONTROL, NO_STORE);
    response
}

pub fn not_found() -> Response<Body> {
    error_page(
        StatusCode::NOT_FOUND,
        "No page or application is configured for this path.",
    )
}

pub fn bad_request(reason: &str) -> Response<Body> {
    text(
        StatusCode::BAD_REQUEST,
        &format!("400 Bad Request: {reason}"),
    )
}

/// Builds a redirect to `location`.
pub fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    match HeaderValue::from_str(location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
        }
        Err(_) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "redirect target is not a valid header value",
            );
        }
    }
    response
}

/// The page used when no maintenance page file exists. It refreshes itself
/// so a browser waiting for a starting tenant gets there on its own.
pub const BUILTIN_MAINTENANCE_PAGE: &str = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
<meta http-equiv=\"refresh\" content=\"5\"><title>503 Service Unavailable</title></head>\n\
<body><h1>Starting up or under maintenance</h1><p>This page will retry in a few seconds.</p></body></html>\n";

/// Builds the maintenance page response: 503, `Retry-After`, never cached.
pub fn maintenance(page: Option<Bytes>, retry_after_secs: u64) -> Response<Body> {
    let body = page.unwrap_or_else(|| Bytes::from_static(BUILTIN_MAINTENANCE_PAGE.as_bytes()));
    let mut response = Response::new(body::full(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HTML);
    headers.insert(CACHE_CONTROL, NO_STORE);
    headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs.max(1)));
    response
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maintenance_has_retry_after_and_no_store() {
        let response = maintenance(None, 5);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[RETRY_AFTER], "5");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
    }

    #[test]
    fn error_page_escapes_detail() {
        let response = error_page(StatusCode::BAD_GATEWAY, "<script>");
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    }

    #[test]
    fn redirect_rejects_invalid_location() {
        assert_eq!(
            redirect(StatusCode::FOUND, "/a\nb").status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(redirect(StatusCode::FOUND, "/a").headers()[LOCATION], "/a");
    }
}
