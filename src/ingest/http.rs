//! `POST /api/v1/publish/location|vendor`: the JSON body is the NATS payload
//! of DESIGN §1.4. Success is 202 `{"published": true}`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::bus::BusError;
use crate::protocol::{Channel, ErrorCode, Update};
use crate::state::Shared;

/// Largest publish body; larger is 413.
pub const MAX_BODY: usize = 64 * 1024;

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// `POST /api/v1/publish/location`.
pub async fn location(state: State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    publish(state, headers, body, Channel::Location).await
}

/// `POST /api/v1/publish/vendor`.
pub async fn vendor(state: State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    publish(state, headers, body, Channel::Vendor).await
}

async fn publish(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes, channel: Channel) -> Response {
    if let Some(expected) = &shared.config.ingest_token {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())) {
            return error(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "missing or wrong bearer token (INGEST_TOKEN)",
            );
        }
    }
    let invalid = |code, message: &str| {
        shared.metrics.updates_invalid.with_label_values(&["http"]).inc();
        error(StatusCode::BAD_REQUEST, code, message)
    };
    let value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return invalid(ErrorCode::InvalidJson, &format!("invalid JSON: {e}")),
    };
    let update = match Update::from_publish_value(channel, value, None) {
        Ok(u) => u,
        Err(e) => return invalid(ErrorCode::InvalidField, &e.to_string()),
    };
    match shared.bus.publish(update).await {
        Ok(()) => {
            shared.metrics.updates_published.with_label_values(&[channel.as_str(), "http"]).inc();
            (StatusCode::ACCEPTED, Json(json!({"published": true}))).into_response()
        }
        Err(BusError::Unavailable(why)) => error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, &why),
    }
}

/// Compares secrets without an early exit, so timing does not leak a prefix.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
