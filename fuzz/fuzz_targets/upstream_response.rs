//! A tenant's response as the bare upstream client decodes it: never a
//! panic, a declared length always matches the body, and a connection is
//! offered for reuse only when the response ended exactly at the last
//! byte with a length or chunked framing.

#![no_main]

use http::{Method, header};
use libfuzzer_sys::fuzz_target;
use navigator::proxy::bare::decode;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the request method; the rest is the response.
    let Some((&selector, response)) = data.split_first() else {
        return;
    };
    let method = if selector % 2 == 0 { Method::GET } else { Method::HEAD };
    let Ok(Some(decoded)) = decode(response, &method) else {
        return;
    };
    let chunked = decoded.headers.contains_key(header::TRANSFER_ENCODING);
    let length = decoded
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<usize>().ok());
    let bodiless = method == Method::HEAD
        || decoded.status.is_informational()
        || decoded.status == 204
        || decoded.status == 304;
    if bodiless {
        assert!(decoded.body.is_empty());
    } else if let (Some(length), false) = (length, chunked) {
        assert_eq!(decoded.body.len(), length);
    }
    if decoded.reusable {
        assert!(bodiless || chunked || length.is_some());
    }
});
