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

/// The role of a header name in the proxy's rewriting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Connection,
    /// One of [`HOP_BY_HOP`] other than `Connection`.
    HopByHop,
    /// One of [`UNTRUSTED_FORWARDING`].
    Untrusted,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    RequestId,
    Host,
    Other,
}

/// Classifies a name by its text: one comparison of lengths and bytes,
/// where a test of each list would compare the name with every entry.
/// The tests check this against the lists.
fn kind(name: &HeaderName) -> Kind {
    match name.as_str() {
        "connection" => Kind::Connection,
        "keep-alive"
        | "proxy-connection"
        | "proxy-authenticate"
        | "proxy-authorization"
        | "te"
        | "trailer"
        | "transfer-encoding"
        | "upgrade" => Kind::HopByHop,
        "forwarded" | "x-forwarded-port" | "x-forwarded-prefix" | "x-forwarded-scheme"
        | "x-forwarded-ssl" | "x-real-ip" | "client-ip" => Kind::Untrusted,
        "x-forwarded-for" => Kind::ForwardedFor,
        "x-forwarded-proto" => Kind::ForwardedProto,
        "x-forwarded-host" => Kind::ForwardedHost,
        "x-request-id" => Kind::RequestId,
        "host" => Kind::Host,
        _ => Kind::Other,
    }
}

/// The kinds of name a header map holds, found in one pass.
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    connection: bool,
    hop_by_hop: bool,
    untrusted: bool,
    forwarded_for: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
    request_id: bool,
    host: bool,
}

impl Present {
    fn scan(headers: &HeaderMap) -> Present {
        let mut present = Present::default();
        for name in headers.keys() {
            match kind(name) {
                Kind::Connection => present.connection = true,
                Kind::HopByHop => present.hop_by_hop = true,
                Kind::Untrusted => present.untrusted = true,
                Kind::ForwardedFor => present.forwarded_for = true,
                Kind::ForwardedProto => present.forwarded_proto = true,
                Kind::ForwardedHost => present.forwarded_host = true,
                Kind::RequestId => present.request_id = true,
                Kind::Host => present.host = true,
                Kind::Other => {}
            }
        }
        present
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

/// Returns [`keeps_alive`] for a message whose parser noted whether it
/// has a `Connection` field, looking the field up only if it has one.
pub fn keeps_alive_noted(version: Version, headers: &HeaderMap, has_connection: bool) -> bool {
    if has_connection {
        keeps_alive(version, headers)
    } else {
        version != Version::HTTP_10
    }
}

/// Writes one field of a message head: `name: value` and CRLF.
pub fn write_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Removes hop-by-hop headers and every header named in `Connection`,
/// of the kinds that `present` found in the map.
fn remove_hop_by_hop(headers: &mut HeaderMap, present: Present) {
    if present.connection {
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
    }
    if present.connection || present.hop_by_hop {
        for name in &HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// The headers the proxy adds to a request on its way upstream. They are
/// kept apart from the request's map: the bare client writes them after
/// the request's own fields, which saves four insertions into the map on
/// every request, and the other clients insert them.
#[derive(Debug)]
pub struct Added<'a> {
    /// `X-Forwarded-For` entries from a trusted proxy, joined, each one
    /// followed by `", "`; the peer's address follows them.
    earlier_hops: Vec<u8>,
    peer: IpAddr,
    /// `X-Forwarded-Proto`, unless a trusted proxy sent one.
    proto: Option<&'static str>,
    /// `X-Forwarded-Host`, unless a trusted proxy sent one.
    host: Option<&'a HeaderValue>,
    request_id: &'a HeaderValue,
}

impl Added<'_> {
    /// Inserts the headers into `headers`, where [`strip_request`] left
    /// none of their names.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        let peer = address_value(self.peer);
        let forwarded_for = if self.earlier_hops.is_empty() {
            peer
        } else {
            let mut chain = self.earlier_hops.clone();
            chain.extend_from_slice(peer.as_bytes());
            HeaderValue::from_bytes(&chain).unwrap_or(peer)
        };
        headers.insert(X_FORWARDED_FOR, forwarded_for);
        if let Some(proto) = self.proto {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        }
        if let Some(host) = self.host {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        headers.insert(X_REQUEST_ID, self.request_id.clone());
    }

    /// Writes the headers as lines of a request head, in the order
    /// [`Added::insert_into`] inserts them.
    pub fn write(&self, out: &mut Vec<u8>) {
        // The address is written in place, without a header value.
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(&self.earlier_hops);
        write_address(self.peer, out);
        out.extend_from_slice(b"\r\n");
        if let Some(proto) = self.proto {
            write_field(out, b"x-forwarded-proto", proto.as_bytes());
        }
        if let Some(host) = self.host {
            write_field(out, b"x-forwarded-host", host.as_bytes());
        }
        write_field(out, b"x-request-id", self.request_id.as_bytes());
    }
}

/// Rewrites request headers for the upstream and inserts the headers the
/// proxy adds. See [`strip_request`].
pub fn prepare_request(
    headers: &mut HeaderMap,
    host: Option<&HeaderValue>,
    forwarding: Forwarding,
    request_id: &HeaderValue,
    websocket: bool,
) {
    strip_request(headers, host, forwarding, request_id, websocket).insert_into(headers);
}

/// Rewrites request headers for the upstream and returns the headers the
/// proxy adds, for the caller to insert or write. `host` is the request's
/// host (the `Host` header, or the URI authority for HTTP/2);
/// `websocket` keeps the upgrade headers a tunnel needs.
///
/// Every header whose name the returned ones use is removed, so that
/// adding them never makes a second line.
pub fn strip_request<'a>(
    headers: &mut HeaderMap,
    host: Option<&'a HeaderValue>,
    forwarding: Forwarding,
    request_id: &'a HeaderValue,
    websocket: bool,
) -> Added<'a> {
    let mut present = Present::scan(headers);
    if present.connection {
        // `Connection` may have named any header, so what is left is
        // looked at again.
        remove_hop_by_hop(headers, present);
        present = Present::scan(headers);
    } else {
        remove_hop_by_hop(headers, present);
    }
    if websocket {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    }
    if let Some(host) = host {
        if !present.host {
            headers.insert(HOST, host.clone());
        }
    }

    if !forwarding.trust_proxy && present.untrusted {
        for name in &UNTRUSTED_FORWARDING {
            headers.remove(name);
        }
    }

    // Several `X-Forwarded-For` lines form one list, in order.
    let mut earlier_hops = Vec::new();
    if present.forwarded_for {
        if forwarding.trust_proxy {
            for existing in headers.get_all(X_FORWARDED_FOR) {
                earlier_hops.extend_from_slice(existing.as_bytes());
                earlier_hops.extend_from_slice(b", ");
            }
        }
        headers.remove(X_FORWARDED_FOR);
    }

    let trusted = forwarding.trust_proxy;
    let proto = replaces(
        headers,
        &X_FORWARDED_PROTO,
        present.forwarded_proto,
        trusted,
    )
    .then_some(if forwarding.tls { "https" } else { "http" });
    let host = if replaces(headers, &X_FORWARDED_HOST, present.forwarded_host, trusted) {
        host
    } else {
        None
    };
    if present.request_id {
        headers.remove(X_REQUEST_ID);
    }
    Added {
        earlier_hops,
        peer: forwarding.peer,
        proto,
        host,
        request_id,
    }
}

/// Returns whether the proxy sets `name` itself, removing the request's
/// field if it has one. A field that a trusted proxy sent stays instead.
fn replaces(headers: &mut HeaderMap, name: &HeaderName, present: bool, trusted: bool) -> bool {
    if trusted && present {
        return false;
    }
    if present {
        headers.remove(name);
    }
    true
}

/// Formats an address as a header value.
fn address_value(address: IpAddr) -> HeaderValue {
    let mut text = Vec::with_capacity(15);
    write_address(address, &mut text);
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Writes an address as text; IPv4 by hand, as it is on the path of every
/// proxied request.
fn write_address(address: IpAddr, out: &mut Vec<u8>) {
    let IpAddr::V4(v4) = address else {
        out.extend_from_slice(address.to_string().as_bytes());
        return;
    };
    for (index, octet) in v4.octets().into_iter().enumerate() {
        if index > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

/// Rewrites response headers from the upstream; a 101 keeps its upgrade
/// headers so the client can switch protocols.
pub fn prepare_response(headers: &mut HeaderMap, switching_protocols: bool) {
    let present = Present::scan(headers);
    if !(present.connection || present.hop_by_hop || switching_protocols) {
        return;
    }
    let upgrade = headers.get(UPGRADE).cloned();
    remove_hop_by_hop(headers, present);
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
    fn kinds_agree_with_the_lists() {
        assert_eq!(kind(&CONNECTION), Kind::Connection);
        for name in HOP_BY_HOP.iter().filter(|name| **name != CONNECTION) {
            assert_eq!(kind(name), Kind::HopByHop, "{name}");
        }
        for name in &UNTRUSTED_FORWARDING {
            assert_eq!(kind(name), Kind::Untrusted, "{name}");
        }
        assert_eq!(kind(&X_FORWARDED_FOR), Kind::ForwardedFor);
        assert_eq!(kind(&X_FORWARDED_PROTO), Kind::ForwardedProto);
        assert_eq!(kind(&X_FORWARDED_HOST), Kind::ForwardedHost);
        assert_eq!(kind(&X_REQUEST_ID), Kind::RequestId);
        assert_eq!(kind(&HOST), Kind::Host);
        assert_eq!(kind(&HeaderName::from_static("x-forwarded")), Kind::Other);
    }

    /// Splits a head into its fields, sorted by name. Fields of one name
    /// keep their order.
    fn lines(head: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(head).unwrap();
        let mut lines: Vec<String> = text
            .split("\r\n")
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect();
        lines.sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
        lines
    }

    fn written(headers: &HeaderMap) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in headers {
            write_field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        out
    }

    #[test]
    fn written_additions_match_inserted_ones() {
        let mut cases = vec![request_headers(), HeaderMap::new()];

        let mut named = request_headers();
        named.insert(CONNECTION, HeaderValue::from_static("host, x-request-id"));
        named.insert(X_REQUEST_ID, HeaderValue::from_static("from-client"));
        cases.push(named);

        let mut many = request_headers();
        many.append(X_FORWARDED_FOR, HeaderValue::from_static("5.6.7.8"));
        many.insert("forwarded", HeaderValue::from_static("for=1.1.1.1"));
        many.insert("accept", HeaderValue::from_static("*/*"));
        cases.push(many);

        let id = HeaderValue::from_static("0123abcd");
        for headers in cases {
            for (trust_proxy, tls) in [(false, false), (true, false), (false, true), (true, true)] {
                let host = headers.get(HOST).cloned();
                let peer_host = HeaderValue::from_static("fallback.test");
                for host in [host.as_ref(), Some(&peer_host), None] {
                    let forwarding = Forwarding {
                        peer: "192.168.10.200".parse().unwrap(),
                        tls,
                        trust_proxy,
                    };

                    let mut inserted = headers.clone();
                    prepare_request(&mut inserted, host, forwarding, &id, false);
                    let mut stripped = headers.clone();
                    let added = strip_request(&mut stripped, host, forwarding, &id, false);
                    let mut head = written(&stripped);
                    added.write(&mut head);

                    assert_eq!(
                        lines(&head),
                        lines(&written(&inserted)),
                        "trust {trust_proxy}, tls {tls}, host {host:?}, headers {headers:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn trusted_proxy_without_forwarding_headers_gets_them() {
        let mut headers = HeaderMap::new();
        let host = HeaderValue::from_static("example.test");
        headers.insert(HOST, host.clone());
        prepare_request(
            &mut headers,
            Some(&host),
            forwarding(true),
            &HeaderValue::from_static("id"),
            false,
        );
        assert_eq!(headers[X_FORWARDED_FOR], "10.0.0.7");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers[X_FORWARDED_HOST], "example.test");
    }

    #[test]
    fn untrusted_forwarded_host_removed_without_host() {
        let mut headers = request_headers();
        prepare_request(
            &mut headers,
            None,
            forwarding(false),
            &HeaderValue::from_static("id"),
            false,
        );
        assert!(!headers.contains_key(X_FORWARDED_HOST));
    }

    #[test]
    fn host_named_in_connection_replaced() {
        let mut headers = request_headers();
        headers.insert(CONNECTION, HeaderValue::from_static("host"));
        let host = HeaderValue::from_static("example.test");
        prepare_request(
            &mut headers,
            Some(&host),
            forwarding(false),
            &HeaderValue::from_static("id"),
            false,
        );
        assert_eq!(headers[HOST], "example.test");
        assert!(!headers.contains_key(CONNECTION));
    }

    #[test]
    fn clean_response_untouched_and_hop_by_hop_removed() {
        let mut clean = HeaderMap::new();
        clean.insert("content-type", HeaderValue::from_static("text/plain"));
        let before = clean.clone();
        prepare_response(&mut clean, false);
        assert_eq!(clean, before);

        let mut dirty = before.clone();
        dirty.insert(CONNECTION, HeaderValue::from_static("x-secret"));
        dirty.insert("x-secret", HeaderValue::from_static("1"));
        dirty.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        prepare_response(&mut dirty, false);
        assert_eq!(dirty, before);
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
