//! `POST /api/v1/publish/location|vendor`: the JSON body is the NATS payload
//! of docs/protocol.md. Success is 202 `{"published": true}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::bus::BusError;
use crate::protocol::{Channel, ErrorCode, Update};
use crate::state::Shared;

pub(crate) use super::constant_time_eq;

/// Largest publish body; larger is 413.
pub const MAX_BODY: usize = 64 * 1024;

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// `POST /api/v1/publish/location`.
pub async fn location(state: State<Arc<Shared>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    publish(state, headers, body, Channel::Location).await
}

/// `POST /api/v1/publish/vendor`.
pub async fn vendor(state: State<Arc<Shared>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    publish(state, headers, body, Channel::Vendor).await
}

/// Whether the request declares a JSON body. Only `application/json`
/// (optionally `; charset=utf-8`) is taken: a browser page can send
/// `text/plain` or a form cross-site without a preflight, never this.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else { return false };
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, v)) if name.trim().eq_ignore_ascii_case("charset") => {
            let v = v.trim().trim_matches('"');
            v.eq_ignore_ascii_case("utf-8") || v.eq_ignore_ascii_case("utf8")
        }
        Some(_) => true,
        None => param.trim().is_empty(),
    })
}

/// The body comes as a `Result`: axum's own rejection of a body over
/// [`MAX_BODY`] is a `text/plain` 413, where every other publish error is the
/// JSON error body of docs/openapi.yaml; and a refused bearer is told so
/// before anything about the body.
async fn publish(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    channel: Channel,
) -> Response {
    if !super::authorized(&shared.config.auth, crate::auth::bearer_token(&headers)) {
        let mut resp =
            error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "missing or wrong bearer token (INGEST_TOKEN)");
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return resp;
    }
    let invalid = |status, code, message: &str| {
        shared.metrics.updates_invalid.with_label_values(&["http"]).inc();
        error(status, code, message)
    };
    if !is_json(&headers) {
        return invalid(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::InvalidJson,
            "Content-Type must be application/json",
        );
    }
    let body = match body {
        Ok(body) => body,
        // Not counted as invalid updates: no update was read.
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::MessageTooLarge,
                &format!("body over {} KiB", MAX_BODY / 1024),
            );
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, "the body could not be read"),
    };
    let value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return invalid(StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, &format!("invalid JSON: {e}")),
    };
    let update = match Update::from_publish_value(channel, value, None) {
        Ok(u) => u,
        Err(e) => return invalid(StatusCode::BAD_REQUEST, ErrorCode::InvalidField, &e.to_string()),
    };
    match shared.bus.publish(update).await {
        Ok(()) => {
            shared.metrics.published(channel, "http", 1);
            (StatusCode::ACCEPTED, Json(json!({"published": true}))).into_response()
        }
        Err(BusError::Unavailable(why)) => error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, &why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_content_types_pass() {
        let ct = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(v));
            is_json(&h)
        };
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(ct(ok), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonx",
            "application/json; charset=latin1",
            "text/json",
        ] {
            assert!(!ct(bad), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }
}
