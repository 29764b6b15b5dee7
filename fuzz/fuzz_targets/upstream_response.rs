//! A tenant's response as the bare upstream client decodes it. Decoding
//! never panics, and a declared length always matches the body. A
//! connection is offered for reuse only when the response was framed by
//! a length or chunked coding and ended exactly at the last byte.

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
    // A list of equal lengths (`5, 5`) counts as one, as RFC 9110 allows.
    let lengths: Option<Vec<usize>> = decoded
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .map(|token| std::str::from_utf8(token).ok()?.trim().parse::<usize>().ok())
        .collect();
    let length = lengths
        .filter(|lengths| lengths.windows(2).all(|pair| pair[0] == pair[1]))
        .and_then(|lengths| lengths.first().copied());
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
