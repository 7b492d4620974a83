//! The browser dashboard: `GET /` and `/ui/…`, a page of plain HTML, CSS and
//! JavaScript (no third-party code, no CDN) that reads the same endpoints as
//! any client: `/usage`, `/health`, `/metrics`, `/internal/usage/*`,
//! `/v1/billing/vm-usage`, `/api/usage/*`, `/v1/budgets`, `/v1/alerts`,
//! `/v1/anomalies`, `/api/v1/meters`.
//!
//! The assets are embedded gzip-compressed (`queries/build.rs`), sent as
//! they are to clients that accept gzip and inflated for the others, with
//! an ETag (`If-None-Match` answers 304). `index.html` is revalidated on
//! every load; the files it names carry their content hash and are cached
//! for a year. The routes are open: the page holds no data, and asks for a
//! token when an API answers 401.

use std::io::Read;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::http::error_response;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    etag: &'static str,
    gzip: &'static [u8],
}

static ASSETS: &[Asset] = include!(concat!(env!("OUT_DIR"), "/dashboard_assets.rs"));

/// Only the page's own origin: no script, style or connection elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{name}", get(asset))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, headers: &HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == name) else {
        return error_response(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("no dashboard file {name:?}"),
        );
    };
    let cache = if a.name == "index.html" {
        "no-cache"
    } else {
        "public, max-age=31536000, immutable"
    };
    let mut h = HeaderMap::new();
    h.insert(header::ETAG, HeaderValue::from_static(a.etag));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if a.name == "index.html" {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == a.etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(a.content_type),
    );
    if accepts_gzip(headers) {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        return (h, a.gzip).into_response();
    }
    let mut body = Vec::new();
    match flate2::read::GzDecoder::new(a.gzip).read_to_end(&mut body) {
        Ok(_) => (h, body).into_response(),
        Err(e) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Embedded file unreadable",
            format!("{name}: {e}"),
        ),
    }
}

/// Whether `Accept-Encoding` takes gzip (not with `q=0`).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|part| {
            let mut it = part.split(';');
            let coding = it.next().unwrap_or("").trim();
            let q = it
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        h
    }

    #[test]
    fn gzip_is_sent_only_when_accepted() {
        assert!(accepts_gzip(&with("accept-encoding", "gzip, deflate, br")));
        assert!(accepts_gzip(&with(
            "accept-encoding",
            "br;q=1.0, GZIP;q=0.5"
        )));
        assert!(!accepts_gzip(&with("accept-encoding", "gzip;q=0")));
        assert!(!accepts_gzip(&with("accept-encoding", "br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn index_names_the_other_assets_by_their_hash() {
        let index = ASSETS.iter().find(|a| a.name == "index.html").unwrap();
        let mut html = String::new();
        flate2::read::GzDecoder::new(index.gzip)
            .read_to_string(&mut html)
            .unwrap();
        for a in ASSETS.iter().filter(|a| a.name != "index.html") {
            // The ETag is the quoted hash the page's link carries.
            let hash = a.etag.trim_matches('"');
            assert!(
                html.contains(&format!("/ui/{}?v={hash}", a.name)),
                "index.html links {} with its hash",
                a.name
            );
        }
    }
}
