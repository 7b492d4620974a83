//! What every HTTP answer of tally shares, built in one place: the
//! `{"error": …, "detail": …}` body and the `Retry-After` header.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// `{"error": …, "detail": …}` with `status`.
pub fn error_response(status: StatusCode, error: &str, detail: String) -> Response {
    (status, Json(json!({"error": error, "detail": detail}))).into_response()
}

/// Tells the client to come back in `secs` seconds (at least one).
pub fn retry_after(r: &mut Response, secs: u64) {
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_and_the_header() {
        let mut r = error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            "x".into(),
        );
        retry_after(&mut r, 0);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        retry_after(&mut r, 30);
        assert_eq!(r.headers()[header::RETRY_AFTER], "30");
    }
}
