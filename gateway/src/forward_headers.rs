//! Which headers cross the gateway, in each direction.
//!
//! To upstreams: the client's headers minus hop-by-hop ones (and any the client's
//! `Connection` header names), minus what the gateway owns (`Host`, `Authorization`,
//! `x-user-id`, `x-user-role`, `X-Forwarded-*`, `Forwarded`, `Content-Length`, `Expect`),
//! plus `x-user-id`/`x-user-role` from the verified token and `X-Forwarded-For/-Proto/-Host`.
//! `x-request-id` and everything else pass through untouched. So do `traceparent` and
//! `tracestate` here; when traces are exported the proxy then replaces them with the context
//! of its own upstream-attempt span (a child of the client's trace), so the upstream's spans
//! hang under the gateway's.
//! The gateway is the edge, so a client's `X-Forwarded-For` is replaced, not appended to.
//!
//! To clients: the upstream's headers minus hop-by-hop ones.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::auth::Identity;

/// The authenticated user, for upstreams.
pub const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
/// The authenticated user's role, for upstreams.
pub const X_USER_ROLE: HeaderName = HeaderName::from_static("x-user-role");
/// The client address.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// The client's protocol.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The `Host` the client asked for.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including those the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The headers to send upstream for a request with `client` headers.
pub fn to_upstream(
    client: &HeaderMap,
    identity: Option<&Identity>,
    client_ip: Option<IpAddr>,
) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    for name in [
        header::HOST,
        header::AUTHORIZATION,
        header::CONTENT_LENGTH,
        header::EXPECT,
        header::FORWARDED,
        X_USER_ID,
        X_USER_ROLE,
        X_FORWARDED_FOR,
        X_FORWARDED_PROTO,
        X_FORWARDED_HOST,
    ] {
        headers.remove(name);
    }
    if let Some(host) = client.get(header::HOST) {
        headers.insert(X_FORWARDED_HOST, host.clone());
    }
    if let Some(ip) = client_ip
        && let Ok(value) = HeaderValue::from_str(&ip.to_string())
    {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    if let Some(identity) = identity {
        // User ids are checked to be header-safe when the token is verified.
        if let Ok(user) = HeaderValue::from_str(&identity.user) {
            headers.insert(X_USER_ID, user);
        }
        headers.insert(
            X_USER_ROLE,
            HeaderValue::from_static(identity.role.as_str()),
        );
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn forged_identity_and_hop_by_hop_headers_are_dropped() {
        let mut client = HeaderMap::new();
        client.insert("x-user-id", "mallory".parse().unwrap());
        client.insert("x-user-role", "admin".parse().unwrap());
        client.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
        client.insert("authorization", "Bearer abc".parse().unwrap());
        client.insert("connection", "keep-alive, x-secret".parse().unwrap());
        client.insert("x-secret", "1".parse().unwrap());
        client.insert("te", "trailers".parse().unwrap());
        client.insert("host", "shop.example".parse().unwrap());
        client.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        client.insert("tracestate", "a=b".parse().unwrap());
        client.insert("x-request-id", "rid".parse().unwrap());

        let anonymous = to_upstream(&client, None, Some([10, 0, 0, 1].into()));
        assert!(anonymous.get("x-user-id").is_none());
        assert!(anonymous.get("x-user-role").is_none());
        assert!(anonymous.get("authorization").is_none());
        assert!(anonymous.get("connection").is_none());
        assert!(anonymous.get("x-secret").is_none());
        assert!(anonymous.get("te").is_none());
        assert!(anonymous.get("host").is_none());
        assert_eq!(anonymous["x-forwarded-for"], "10.0.0.1");
        assert_eq!(anonymous["x-forwarded-host"], "shop.example");
        assert_eq!(anonymous["x-forwarded-proto"], "http");
        assert_eq!(anonymous["traceparent"], client["traceparent"]);
        assert_eq!(anonymous["tracestate"], "a=b");
        assert_eq!(anonymous["x-request-id"], "rid");

        let alice = Identity {
            user: "alice".into(),
            role: Role::User,
        };
        let authed = to_upstream(&client, Some(&alice), None);
        assert_eq!(authed["x-user-id"], "alice");
        assert_eq!(authed["x-user-role"], "user");
        assert!(authed.get("x-forwarded-for").is_none());
    }
}
