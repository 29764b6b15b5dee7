//! Header rules for requests sent upstream and responses sent back:
//! hop-by-hop removal and the `X-Forwarded-*` family.

use std::net::IpAddr;

use http::header::{
    CONNECTION, FORWARDED, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Version};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, not the message (RFC 9110 7.6.1),
/// plus the `Proxy-*` and `Keep-Alive` headers that older peers send.
const HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Headers by which a client could claim another address, scheme, host,
/// port or path prefix (Rack and Rails read them). They pass upstream only
/// with `trust_proxy`.
const UNTRUSTED_FORWARDING: [HeaderName; 7] = [
    FORWARDED,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("client-ip"),
];

/// Removes each of `names` from `headers`. Most messages carry none of
/// them, and one pass comparing names is cheaper than a hashed removal
/// per name.
fn remove_each(headers: &mut HeaderMap, names: &[HeaderName]) {
    if !headers.keys().any(|key| names.contains(key)) {
        return;
    }
    for name in names {
        headers.remove(name);
    }
}

/// Facts about the client connection that upstream headers carry.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding {
    pub peer: IpAddr,
    pub tls: bool,
    pub trust_proxy: bool,
}

/// Returns whether the request is a WebSocket upgrade. Other upgrade
/// protocols (`h2c` above all) are never honoured.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("websocket"))
        });
    upgrade && connection_has_token(headers, "upgrade")
}

/// Returns whether a `Connection` field lists `token`.
pub fn connection_has_token(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Returns whether the connection may carry another message after the one
/// with these `headers` (RFC 9112 §9.3): on HTTP/1.1 unless `Connection`
/// lists `close`, on HTTP/1.0 only if it lists `keep-alive`.
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for value in headers.get_all(CONNECTION) {
        for token in value.as_bytes().split(|&byte| byte == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    if version == Version::HTTP_10 {
        keep_alive && !close
    } else {
        !close
    }
}

/// Removes hop-by-hop headers and every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.contains_key(CONNECTION) {
        remove_each(headers, &HOP_BY_HOP);
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    remove_each(headers, &HOP_BY_HOP);
}

/// Rewrites request headers for the upstream. `host` is the request's host
/// (the `Host` header, or the URI authority for HTTP/2); `websocket` keeps
/// the upgrade headers a tunnel needs.
pub fn prepare_request(
    headers: &mut HeaderMap,
    host: Option<&HeaderValue>,
    forwarding: Forwarding,
    request_id: &HeaderValue,
    websocket: bool,
) {
    remove_hop_by_hop(headers);
    if websocket {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
    if let Some(host) = host {
        if !headers.contains_key(HOST) {
            headers.insert(HOST, host.clone());
        }
    }

    if !forwarding.trust_proxy {
        remove_each(headers, &UNTRUSTED_FORWARDING);
    }

    let peer = address_value(forwarding.peer);
    // Several `X-Forwarded-For` lines form one list, in order.
    let mut chain = Vec::new();
    if forwarding.trust_proxy {
        for existing in headers.get_all(X_FORWARDED_FOR) {
            chain.extend_from_slice(existing.as_bytes());
            chain.extend_from_slice(b", ");
        }
    }
    let forwarded_for = if chain.is_empty() {
        peer
    } else {
        chain.extend_from_slice(peer.as_bytes());
        HeaderValue::from_bytes(&chain).unwrap_or(peer)
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);

    if !(forwarding.trust_proxy && headers.contains_key(X_FORWARDED_PROTO)) {
        let proto = if forwarding.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !(forwarding.trust_proxy && headers.contains_key(X_FORWARDED_HOST)) {
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
    headers.insert(X_REQUEST_ID, request_id.clone());
}

/// Formats an address as a header value; IPv4 by hand, as it is on the
/// path of every proxied request.
fn address_value(address: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = address else {
        return HeaderValue::from_str(&address.to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
    };
    let mut text = [0u8; 15];
    let mut length = 0;
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            text[length] = b'.';
            length += 1;
        }
        if octet >= 100 {
            text[length] = b'0' + octet / 100;
            length += 1;
        }
        if octet >= 10 {
            text[length] = b'0' + octet / 10 % 10;
            length += 1;
        }
        text[length] = b'0' + octet % 10;
        length += 1;
    }
    HeaderValue::from_bytes(&text[..length]).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Rewrites response headers from the upstream; a 101 keeps its upgrade
/// headers so the client can switch protocols.
pub fn prepare_response(headers: &mut HeaderMap, switching_protocols: bool) {
    let upgrade = headers.get(UPGRADE).cloned();
    remove_hop_by_hop(headers);
    if switching_protocols {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(upgrade) = upgrade {
            headers.insert(UPGRADE, upgrade);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarding(trust_proxy: bool) -> Forwarding {
        Forwarding {
            peer: "10.0.0.7".parse().unwrap(),
            tls: false,
            trust_proxy,
        }
    }

    fn request_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("example.test"));
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        headers.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed.test"));
        headers
    }

    #[test]
    fn addresses_formatted_as_std_does() {
        for text in [
            "0.0.0.0",
            "10.0.0.7",
            "127.0.0.1",
            "192.168.100.255",
            "1.20.3.99",
        ] {
            let address: IpAddr = text.parse().unwrap();
            assert_eq!(address_value(address), text);
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(address_value(v6), "2001:db8::1");
    }

    #[test]
    fn hop_by_hop_and_connection_named_removed() {
        let mut headers = request_headers();
        let host = headers.get(HOST).cloned();
        prepare_request(
            &mut headers,
            host.as_ref(),
            forwarding(false),
            &HeaderValue::from_static("id"),
            false,
        );
        for name in ["connection", "x-secret", "keep-alive", "transfer-encoding"] {
            assert!(!headers.contains_key(name), "{name} should be removed");
        }
        assert_eq!(headers[HOST], "example.test");
        assert_eq!(headers[X_REQUEST_ID], "id");
    }

    #[test]
    fn untrusted_forwarded_headers_replaced() {
        let mut headers = request_headers();
        let host = headers.get(HOST).cloned();
        prepare_request(
            &mut headers,
            host.as_ref(),
            forwarding(false),
            &HeaderValue::from_static("id"),
            false,
        );
        assert_eq!(headers[X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers[X_FORWARDED_HOST], "example.test");
    }

    #[test]
    fn trusted_forwarded_headers_kept() {
        let mut headers = request_headers();
        let host = headers.get(HOST).cloned();
        prepare_request(
            &mut headers,
            host.as_ref(),
            forwarding(true),
            &HeaderValue::from_static("id"),
            false,
        );
        assert_eq!(headers[X_FORWARDED_FOR], "1.2.3.4, 10.0.0.7");
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
        assert_eq!(headers[X_FORWARDED_HOST], "spoofed.test");
    }

    #[test]
    fn forwarded_for_lines_joined_when_trusted() {
        let mut headers = request_headers();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("5.6.7.8"));
        prepare_request(
            &mut headers,
            None,
            forwarding(true),
            &HeaderValue::from_static("id"),
            false,
        );
        assert_eq!(headers[X_FORWARDED_FOR], "1.2.3.4, 5.6.7.8, 10.0.0.7");
        assert_eq!(headers.get_all(X_FORWARDED_FOR).iter().count(), 1);
    }

    #[test]
    fn spoofable_forwarding_headers_need_trust() {
        for trust_proxy in [false, true] {
            let mut headers = request_headers();
            for name in &UNTRUSTED_FORWARDING {
                headers.insert(name, HeaderValue::from_static("spoofed"));
            }
            prepare_request(
                &mut headers,
                None,
                forwarding(trust_proxy),
                &HeaderValue::from_static("id"),
                false,
            );
            for name in &UNTRUSTED_FORWARDING {
                assert_eq!(headers.contains_key(name), trust_proxy, "{name}");
            }
        }
    }

    #[test]
    fn websocket_upgrade_detected_h2c_not() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_websocket_upgrade(&headers));
        headers.insert(UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!is_websocket_upgrade(&headers));
    }

    #[test]
    fn websocket_headers_survive_for_tunnel() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert("sec-websocket-key", HeaderValue::from_static("abc"));
        prepare_request(
            &mut headers,
            None,
            forwarding(false),
            &HeaderValue::from_static("id"),
            true,
        );
        assert_eq!(headers[UPGRADE], "websocket");
        assert_eq!(headers[CONNECTION], "upgrade");
        assert_eq!(headers["sec-websocket-key"], "abc");
    }
}
