//! The page, its script and style, and the vendored chart library, compiled into the binary
//! and served with their content types, an `ETag`, and cache headers: `no-cache` (revalidate,
//! answered 304 when unchanged) for the gateway's own files, a year and `immutable` for uPlot,
//! whose URL carries its version.

use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Version of the vendored uPlot (`gateway/assets/vendor/uplot/README.md`), part of its URLs
/// below and in the page; the tests check all three agree with the vendored file.
#[cfg(test)]
const UPLOT_VERSION: &str = "1.6.32";

/// Revalidate every time (the gateway's own files change with the gateway).
const REVALIDATE: &str = "no-cache";
/// The URL changes with the content (it carries the library's version).
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Scripts, styles, data and images from the gateway only; no inline code, no framing.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug)]
pub(crate) struct Asset {
    /// Where it is served.
    pub(crate) path: &'static str,
    body: &'static [u8],
    content_type: &'static str,
    cache_control: &'static str,
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    const fn new(
        path: &'static str,
        body: &'static [u8],
        content_type: &'static str,
        cache_control: &'static str,
    ) -> Self {
        Self {
            path,
            body,
            content_type,
            cache_control,
            etag: OnceLock::new(),
        }
    }

    /// A strong validator: the FNV-1a hash of the content.
    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let hash = self.body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
            HeaderValue::try_from(format!("\"{hash:016x}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
        })
    }
}

/// The page.
pub(crate) static PAGE: Asset = Asset::new(
    super::DASHBOARD_PATH,
    include_bytes!("../../assets/dashboard.html"),
    "text/html; charset=utf-8",
    REVALIDATE,
);

/// Everything under `/dashboard/assets/`.
pub(crate) static ASSETS: [Asset; 5] = [
    Asset::new(
        "/dashboard/assets/dashboard.js",
        include_bytes!("../../assets/dashboard.js"),
        "text/javascript; charset=utf-8",
        REVALIDATE,
    ),
    Asset::new(
        "/dashboard/assets/dashboard.css",
        include_bytes!("../../assets/dashboard.css"),
        "text/css; charset=utf-8",
        REVALIDATE,
    ),
    Asset::new(
        "/dashboard/assets/uplot-1.6.32/uPlot.iife.min.js",
        include_bytes!("../../assets/vendor/uplot/uPlot.iife.min.js"),
        "text/javascript; charset=utf-8",
        IMMUTABLE,
    ),
    Asset::new(
        "/dashboard/assets/uplot-1.6.32/uPlot.min.css",
        include_bytes!("../../assets/vendor/uplot/uPlot.min.css"),
        "text/css; charset=utf-8",
        IMMUTABLE,
    ),
    Asset::new(
        "/dashboard/assets/uplot-1.6.32/LICENSE",
        include_bytes!("../../assets/vendor/uplot/LICENSE"),
        "text/plain; charset=utf-8",
        IMMUTABLE,
    ),
];

/// `GET /dashboard`.
pub(crate) async fn page(request: Request) -> Response {
    let mut response = serve(&PAGE, request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Serves `asset`, or 304 when the client's copy is current.
pub(crate) async fn serve(asset: &'static Asset, request: Request) -> Response {
    let etag = asset.etag();
    let mut headers = HeaderMap::new();
    headers.insert(header::ETAG, etag.clone());
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(asset.cache_control),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if matches_etag(request.headers(), etag) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (headers, asset.body).into_response()
}

/// Whether `If-None-Match` lists `etag` (or is `*`).
fn matches_etag(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_every_asset_and_the_uplot_urls_carry_its_version() {
        let page = std::str::from_utf8(PAGE.body).unwrap();
        let script = std::str::from_utf8(ASSETS[0].body).unwrap();
        for asset in ASSETS.iter().take(4) {
            assert!(
                page.contains(asset.path),
                "{} is not linked from the page",
                asset.path
            );
        }
        assert!(script.contains(super::super::DATA_PATH));
        for asset in ASSETS.iter().filter(|a| a.path.contains("uplot")) {
            assert!(asset.path.contains(&format!("uplot-{UPLOT_VERSION}/")));
        }
        let vendored = std::str::from_utf8(ASSETS[2].body).unwrap();
        assert!(vendored.contains(&format!("(v{UPLOT_VERSION})")));
        // No inline script or style: the page's CSP forbids them.
        assert!(!page.contains("<script>") && !page.contains("style="));
    }

    #[test]
    fn if_none_match_is_honoured() {
        let etag = HeaderValue::from_static("\"abc\"");
        let mut headers = HeaderMap::new();
        assert!(!matches_etag(&headers, &etag));
        headers.insert(header::IF_NONE_MATCH, "\"x\", W/\"abc\"".parse().unwrap());
        assert!(matches_etag(&headers, &etag));
        headers.insert(header::IF_NONE_MATCH, "\"x\"".parse().unwrap());
        assert!(!matches_etag(&headers, &etag));
    }
}
