//! Operator endpoints: health, readiness, metrics and status. No token: keep
//! them on the operators' network.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::bus::DependencyStatus;
use crate::session::Transport;
use crate::state::Shared;

fn check(status: &DependencyStatus) -> Value {
    match status {
        DependencyStatus::Ok => json!({"status": "ok"}),
        DependencyStatus::Down(detail) => json!({"status": "down", "detail": detail}),
        DependencyStatus::Disabled => json!({"status": "disabled"}),
    }
}

/// The `/health` body and its status code: 503 when a required
/// dependency (the bus) is down, `degraded` (200) when an optional one
/// (Redis, JetStream, the audit database) is. Shared with the dashboard's
/// stats stream and the `venta_dependency_up` gauges, so all three agree.
pub fn health_report(shared: &Shared) -> (StatusCode, Value) {
    let nats = shared.bus.health();
    let extra = shared.bus.extra_checks();
    let redis = shared.limiter.health();
    let database = shared.audit.health();
    // Area subscriptions across instances (the KV of positions): down means
    // `subscribe_area` answers unavailable, everything else still works.
    let areas = shared.areas.health();
    let degraded = matches!(redis, DependencyStatus::Down(_))
        || matches!(database, DependencyStatus::Down(_))
        || matches!(areas, DependencyStatus::Down(_))
        || extra.iter().any(|(_, s)| matches!(s, DependencyStatus::Down(_)));
    let (status, code) = match nats {
        DependencyStatus::Down(_) => ("down", StatusCode::SERVICE_UNAVAILABLE),
        _ if degraded => ("degraded", StatusCode::OK),
        _ => ("ok", StatusCode::OK),
    };
    let mut checks = serde_json::Map::new();
    let m = &shared.metrics;
    for (name, s) in [("nats", &nats), ("redis", &redis), ("database", &database), ("areas", &areas)]
        .into_iter()
        .chain(extra.iter().map(|(n, s)| (*n, s)))
    {
        checks.insert(name.into(), check(s));
        m.set_dependency(name, s);
    }
    (code, json!({"status": status, "checks": checks}))
}

/// `GET /health`: overall status and one entry per dependency.
pub async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let (code, body) = health_report(&shared);
    (code, Json(body)).into_response()
}

/// `GET /health/live`: the process is up.
pub async fn live() -> Response {
    (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
}

/// `GET /health/ready`: 503 while starting, while the bus is down and from
/// the first moment of shutdown.
pub async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let bus_ok = !matches!(shared.bus.health(), DependencyStatus::Down(_));
    if shared.is_ready() && bus_ok {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "not ready"}))).into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let m = &shared.metrics;
    m.subscriptions.set(shared.hub.subscription_count() as i64);
    m.topics.set(shared.hub.topic_count() as i64);
    m.audit_queue_depth.set(shared.audit.queue_depth() as i64);
    // The dependency gauges are set from the same checks as /health.
    let _ = health_report(&shared);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], m.render()).into_response()
}

/// The `/ws/status` body; the dashboard's stats stream shows the same
/// numbers.
pub fn status_report(shared: &Shared) -> Value {
    let m = &shared.metrics;
    let gauge = |t: Transport, e: &str| m.connections.with_label_values(&[t.as_str(), e]).get().max(0);
    let (mut by_transport, mut location, mut vendor) = (serde_json::Map::new(), 0, 0);
    for t in Transport::ALL {
        let (l, v) = (gauge(t, "location"), gauge(t, "vendor"));
        by_transport.insert(t.as_str().into(), json!(l + v));
        location += l;
        vendor += v;
    }
    let (msg_in, msg_out) = m.totals();
    json!({
        "instanceId": shared.instance_id,
        "uptimeSeconds": shared.uptime_secs(),
        "connections": {
            "total": location + vendor,
            "byTransport": by_transport,
            "byEndpoint": {"location": location, "vendor": vendor},
        },
        "subscriptions": shared.hub.subscription_count(),
        "topics": shared.hub.topic_count(),
        "messages": {"in": msg_in, "out": msg_out},
    })
}

/// `GET /ws/status`: connections, subscriptions and traffic of this instance.
pub async fn status(State(shared): State<Arc<Shared>>) -> Response {
    Json(status_report(&shared)).into_response()
}

/// `GET /wt/cert-hash`: the SHA-256 of the WebTransport certificate, for
/// browsers' `serverCertificateHashes` (and `next` during a rotation). Any
/// origin may read it: a certificate hash is public, and the page that
/// needs it is usually served from another origin than the gateway.
pub async fn cert_hash(State(shared): State<Arc<Shared>>) -> Response {
    let cors = [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"), (header::CACHE_CONTROL, "no-store")];
    match shared.wt_certs.to_json() {
        Some(body) => (StatusCode::OK, cors, Json(body)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            cors,
            Json(json!({"error": {"code": "unavailable", "message": "WebTransport is not serving"}})),
        )
            .into_response(),
    }
}
