//! The route table: which route a path belongs to, who may call it, and the upstream path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, Method};

use crate::config::Access;
use crate::upstream::Pool;

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Name for metrics and logs.
    pub name: Arc<str>,
    /// Path prefix (no trailing `/` unless it is `/`).
    pub prefix: String,
    /// Replacement for the prefix; `None` keeps the path.
    pub rewrite: Option<String>,
    /// Primary pool.
    pub pool: Arc<Pool>,
    /// Access for methods without a rule.
    pub access: Access,
    /// Access per method.
    pub methods: HashMap<Method, Access>,
    /// Deadline for the whole request.
    pub timeout: Duration,
    /// Extra attempts allowed when a retry is safe.
    pub retries: u32,
    /// Canary split.
    pub canary: Option<Canary>,
}

/// A canary split of a route.
#[derive(Debug)]
pub struct Canary {
    /// The canary pool.
    pub pool: Arc<Pool>,
    /// Share of requests (0–100).
    pub percent: u8,
    /// Header forcing the choice.
    pub header: Option<HeaderName>,
}

impl Route {
    /// Whether `path` belongs to this route (prefix match on a segment boundary).
    pub fn matches(&self, path: &str) -> bool {
        if self.prefix == "/" {
            return true;
        }
        path.strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Who may call the route with `method`.
    pub fn access(&self, method: &Method) -> Access {
        self.methods.get(method).copied().unwrap_or(self.access)
    }

    /// The upstream path and query for a matched `path` (with the prefix rewritten).
    pub fn upstream_path(&self, path: &str, query: Option<&str>) -> String {
        let mut out = match &self.rewrite {
            None => path.to_owned(),
            Some(rewrite) => {
                let rest = if self.prefix == "/" {
                    path
                } else {
                    path.get(self.prefix.len()..).unwrap_or("")
                };
                let base = rewrite.trim_end_matches('/');
                let joined = format!("{base}{rest}");
                if joined.is_empty() {
                    "/".to_owned()
                } else if joined.starts_with('/') {
                    joined
                } else {
                    format!("/{joined}")
                }
            }
        };
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    /// Picks the pool for a request: the canary when the header forces it or the request
    /// falls in the canary share (sticky per user: the same user always lands on the same
    /// side), else the primary. A share-based pick falls back to the primary when the canary
    /// has no healthy upstream; a header-forced pick does not.
    pub fn choose_pool(&self, headers: &HeaderMap, user: Option<&str>) -> (&Arc<Pool>, bool) {
        let Some(canary) = &self.canary else {
            return (&self.pool, false);
        };
        if let Some(name) = &canary.header
            && let Some(value) = headers.get(name).and_then(|v| v.to_str().ok())
        {
            match value.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "always" => return (&canary.pool, true),
                "0" | "false" | "no" | "never" => return (&self.pool, false),
                _ => {}
            }
        }
        if canary.percent == 0 {
            return (&self.pool, false);
        }
        let roll = match user {
            Some(user) => fnv1a(user.as_bytes(), self.name.as_bytes()) % 100,
            None => rand::random_range(0..100u64),
        };
        if roll < u64::from(canary.percent) && canary.pool.has_healthy() {
            (&canary.pool, true)
        } else {
            (&self.pool, false)
        }
    }
}

/// FNV-1a over `a` then `b`: stable across runs and Rust versions (for sticky canaries).
fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in a.iter().chain(b"/").chain(b) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Routes sorted so that the longest prefix is tried first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// A table of `routes`.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Self { routes }
    }

    /// The route for `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.matches(path))
    }
}

/// Whether `path` is acceptable: absolute, without backslashes, and free of `.`/`..`
/// segments (also percent-encoded, also behind an encoded slash), which could climb out of a
/// route's prefix at the upstream.
pub fn is_clean_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains('\\')
        && path
            .split('/')
            .flat_map(split_encoded_slashes)
            .all(|segment| !is_dot_segment(segment.as_bytes()))
}

/// Splits a segment at percent-encoded slashes (`%2F`, `%2f`).
fn split_encoded_slashes(segment: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(segment);
    std::iter::from_fn(move || {
        let current = rest?;
        let at = current
            .as_bytes()
            .windows(3)
            .position(|w| w[0] == b'%' && w[1] == b'2' && w[2].eq_ignore_ascii_case(&b'f'));
        match at {
            Some(i) => {
                rest = current.get(i + 3..);
                current.get(..i)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

/// `.` or `..`, each dot possibly written `%2e`/`%2E`.
fn is_dot_segment(mut segment: &[u8]) -> bool {
    let mut dots = 0;
    while !segment.is_empty() {
        if segment[0] == b'.' {
            segment = &segment[1..];
        } else if segment.len() >= 3
            && segment[0] == b'%'
            && segment[1] == b'2'
            && segment[2].eq_ignore_ascii_case(&b'e')
        {
            segment = &segment[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Balance;
    use crate::upstream::Upstream;

    fn pool(name: &str) -> Arc<Pool> {
        Arc::new(Pool::new(
            name,
            vec![Arc::new(Upstream::new("http://x"))],
            Balance::RoundRobin,
        ))
    }

    fn route(prefix: &str, rewrite: Option<&str>) -> Route {
        Route {
            name: prefix.into(),
            prefix: prefix.to_owned(),
            rewrite: rewrite.map(str::to_owned),
            pool: pool("p"),
            access: Access::User,
            methods: HashMap::from([(Method::GET, Access::Public)]),
            timeout: Duration::from_secs(1),
            retries: 0,
            canary: None,
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let r = route("/api/orders", Some("/orders"));
        assert!(r.matches("/api/orders"));
        assert!(r.matches("/api/orders/"));
        assert!(r.matches("/api/orders/1/pay"));
        assert!(!r.matches("/api/ordersx"));
        assert!(!r.matches("/api"));
    }

    #[test]
    fn rewrites_replace_the_prefix_and_keep_the_query() {
        let r = route("/api/orders", Some("/orders"));
        assert_eq!(r.upstream_path("/api/orders", None), "/orders");
        assert_eq!(
            r.upstream_path("/api/orders/1/pay", Some("a=1")),
            "/orders/1/pay?a=1"
        );
        let root = route("/api/x", Some("/"));
        assert_eq!(root.upstream_path("/api/x", None), "/");
        assert_eq!(root.upstream_path("/api/x/y", None), "/y");
        let keep = route("/stock", None);
        assert_eq!(keep.upstream_path("/stock/a", Some("q")), "/stock/a?q");
    }

    #[test]
    fn longest_prefix_wins_and_methods_override_access() {
        let table = RouteTable::new(vec![route("/api", None), route("/api/orders", None)]);
        assert_eq!(&*table.find("/api/orders/1").unwrap().name, "/api/orders");
        assert_eq!(&*table.find("/api/stock").unwrap().name, "/api");
        assert!(table.find("/other").is_none());
        let r = route("/a", None);
        assert_eq!(r.access(&Method::GET), Access::Public);
        assert_eq!(r.access(&Method::PUT), Access::User);
    }

    #[test]
    fn dot_segments_are_refused() {
        for bad in [
            "/api/orders/../stock",
            "/api/orders/%2e%2E/stock",
            "/api/./x",
            "/a/.%2e",
            "/a\\b",
            "/a/..%2fb",
            "/a/b%2F%2e%2e%2Fc",
            "relative",
        ] {
            assert!(!is_clean_path(bad), "{bad}");
        }
        for good in [
            "/",
            "/api/orders/1",
            "/a/..b",
            "/a/b.c",
            "/a/...",
            "/a/%2e%2ex",
            "/a%2fb",
        ] {
            assert!(is_clean_path(good), "{good}");
        }
    }

    #[test]
    fn canary_header_and_share() {
        let mut r = route("/a", None);
        r.canary = Some(Canary {
            pool: pool("canary"),
            percent: 0,
            header: Some(HeaderName::from_static("x-canary")),
        });
        let mut headers = HeaderMap::new();
        assert!(!r.choose_pool(&headers, None).1);
        headers.insert("x-canary", "true".parse().unwrap());
        assert!(r.choose_pool(&headers, None).1);
        headers.insert("x-canary", "0".parse().unwrap());
        if let Some(c) = &mut r.canary {
            c.percent = 100;
        }
        assert!(!r.choose_pool(&headers, None).1);
        assert!(r.choose_pool(&HeaderMap::new(), Some("alice")).1);
    }

    #[test]
    fn sticky_split_is_stable_and_roughly_proportional() {
        let in_canary = (0..1000)
            .filter(|i| fnv1a(format!("user{i}").as_bytes(), b"r") % 100 < 30)
            .count();
        assert!((200..400).contains(&in_canary), "{in_canary}");
        assert_eq!(fnv1a(b"alice", b"r"), fnv1a(b"alice", b"r"));
    }
}
