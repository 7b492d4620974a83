//! What every HTTP answer of tally shares, built in one place: the
//! `{"error": …, "detail": …}` body, the RFC 7807 problem of the APIs that
//! speak it (OpenMeter's), and the `Retry-After` header.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// `{"error": …, "detail": …}` with `status`.
pub fn error_response(status: StatusCode, error: &str, detail: String) -> Response {
    (status, Json(json!({"error": error, "detail": detail}))).into_response()
}

/// An RFC 7807 problem (`application/problem+json`), as OpenMeter's API
/// answers and its clients read: `detail` says what is wrong.
pub fn problem(status: StatusCode, title: &str, detail: String) -> Response {
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut r = (status, body.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
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

    #[tokio::test]
    async fn a_problem_is_problem_json_with_its_detail() {
        let r = problem(
            StatusCode::BAD_REQUEST,
            "Bad Request",
            "id is required".into(),
        );
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = axum::body::to_bytes(r.into_body(), 1 << 10).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["detail"], "id is required");
        assert_eq!(v["status"], 400);
        assert_eq!(v["title"], "Bad Request");
    }
}
