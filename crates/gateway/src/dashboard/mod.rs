//! The operators' live dashboard, served by the gateway itself: `GET /` (a
//! map of the operator endpoints), `GET /dashboard` (one small page, its JS
//! and CSS embedded in the binary: no CDN, no framework, no internet) and
//! `GET /dashboard/stats`, a Server-Sent Events stream of this instance's
//! own numbers once per `DASHBOARD_INTERVAL_MS`.
//!
//! The page and its stream are behind `ADMIN_TOKEN`, checked like the audit
//! API (constant time). A browser cannot put a bearer header on a page it
//! navigates to, so `Basic` credentials with the token as password are taken
//! too: the browser asks once, then sends them with the page's own requests.
//! The page therefore never holds the token, and it cannot leak it into its
//! HTML, its URLs or the logs. Without `ADMIN_TOKEN` the routes answer 404,
//! like the audit API: an endpoint no token can open is not served.

mod top;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use prometheus::core::Metric as _;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::ingest::http::constant_time_eq;
use crate::state::Shared;

pub use top::{HALF_LIFE, TopVendors};

/// The page; `app.js` and `style.css` are separate so the page's Content
/// Security Policy can forbid inline script.
const PAGE: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const STYLE_CSS: &str = include_str!("../../assets/dashboard/style.css");

/// Who the map's WebSocket connects as when the gateway signs its token.
pub const MAP_USER: &str = "dashboard";

/// Lifetime of a map token: short, the page fetches a new one per connect.
const MAP_TOKEN_TTL_SECS: u64 = 300;

const REALM: &str = "Basic realm=\"venta-gateway dashboard\", charset=\"UTF-8\"";

/// Scripts only from the gateway, network only back to it (WebSocket
/// included: CSP 3 `'self'` covers ws/wss of the same host), no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What the dashboard routes share.
struct Dashboard {
    shared: Arc<Shared>,
    /// `DASHBOARD_MAX_STREAMS` stats streams at most.
    streams: Arc<Semaphore>,
}

/// The dashboard's routes, with their own state, for any outer router.
pub fn routes<S: Clone + Send + Sync + 'static>(shared: &Arc<Shared>) -> Router<S> {
    let streams = Arc::new(Semaphore::new(shared.config.http.dashboard_max_streams));
    let dash = Arc::new(Dashboard { shared: Arc::clone(shared), streams });
    Router::new()
        .route("/", get(index))
        .route("/dashboard", get(page))
        .route("/dashboard/app.js", get(app_js))
        .route("/dashboard/style.css", get(style_css))
        .route("/dashboard/stats", get(stats))
        .route("/dashboard/map-token", get(map_token))
        .with_state(dash)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

/// The credential a request presents: a bearer token, or the password of
/// Basic credentials (any user name).
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    if let Some(t) = crate::auth::bearer_token(headers) {
        return Some(t.as_bytes().to_vec());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, b64) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// `None` when the request carries `ADMIN_TOKEN`; else the answer to give.
fn refusal(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &shared.config.auth.admin_token else {
        return Some(error(StatusCode::NOT_FOUND, "unavailable", "the dashboard is off: ADMIN_TOKEN is not set"));
    };
    match presented(headers) {
        Some(given) if constant_time_eq(&given, expected.as_bytes()) => None,
        _ => {
            let mut resp = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong ADMIN_TOKEN (a bearer token, or the password of Basic credentials)",
            );
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(REALM));
            Some(resp)
        }
    }
}

/// The operator endpoints, for `GET /`.
const LINKS: [(&str, &str); 9] = [
    ("/health", "overall health and one check per dependency (503 when NATS is down)"),
    ("/health/live", "liveness"),
    ("/health/ready", "readiness (503 while starting, NATS down, or shutting down)"),
    ("/ws/status", "connections, subscriptions, topics and messages of this instance (JSON)"),
    ("/metrics", "Prometheus metrics"),
    ("/dashboard", "live dashboard and map (ADMIN_TOKEN)"),
    ("/api/v1/audit", "subscription audit trail (ADMIN_TOKEN bearer)"),
    ("/wt/cert-hash", "WebTransport certificate hash for serverCertificateHashes"),
    ("/ws/location", "WebSocket endpoint (also /ws/vendor); protocol: docs/protocol.md in the repository"),
];

/// `GET /`: where to go from here, as HTML for a browser and JSON for
/// everything else.
async fn index(headers: HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.split(',').any(|t| t.trim().starts_with("text/html")));
    let version = env!("CARGO_PKG_VERSION");
    if wants_html {
        let items: String = LINKS
            .iter()
            .map(|(path, what)| format!("<li><a href=\"{path}\"><code>{path}</code></a> — {what}</li>\n"))
            .collect();
        let body = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>venta-gateway</title>\
             <meta name=\"viewport\" content=\"width=device-width\"></head>\n<body><h1>venta-gateway {version}</h1>\n\
             <p>Real-time vendor location and vendor data updates over WebSocket and WebTransport.</p>\n<ul>\n{items}</ul>\n\
             <p>Protocol: <code>docs/protocol.md</code> in the source repository.</p></body></html>\n"
        );
        return ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CONTENT_SECURITY_POLICY, CSP)], body)
            .into_response();
    }
    let links: serde_json::Map<String, Value> =
        LINKS.iter().map(|(path, what)| ((*path).to_owned(), json!({"href": path, "title": what}))).collect();
    axum::Json(json!({
        "name": "venta-gateway",
        "version": version,
        "links": links,
        "docs": "docs/protocol.md in the source repository",
    }))
    .into_response()
}

fn asset(ctype: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /dashboard`: the page (no data in it; its script fetches the stream).
async fn page(State(dash): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Some(resp) = refusal(&dash.shared, &headers) {
        return resp;
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
        .into_response()
}

/// The page's script: public code, like the binary it is part of.
async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

/// `GET /dashboard/map-token`: a short-lived client JWT for the map's
/// WebSocket (user [`MAP_USER`]) when the gateway holds an HS256 secret;
/// `null` when auth is off (none needed) or uses a public key (the gateway
/// cannot sign one). Also the map's limits.
async fn map_token(State(dash): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Some(resp) = refusal(&dash.shared, &headers) {
        return resp;
    }
    let c = &dash.shared.config;
    let token = match &c.auth.jwt_secret {
        Some(secret) => crate::auth::dev_token_for(
            secret,
            MAP_USER,
            MAP_TOKEN_TTL_SECS,
            c.auth.jwt_issuer.as_deref(),
            c.auth.jwt_audience.as_deref(),
        )
        .ok(),
        None => None,
    };
    let note = match (&token, dash.shared.auth.enabled()) {
        (None, true) => Some("client auth uses a public key: the gateway cannot sign a map token"),
        _ => None,
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({
            "token": token,
            "userId": MAP_USER,
            "expiresInSeconds": MAP_TOKEN_TTL_SECS,
            "authRequired": dash.shared.auth.enabled(),
            "note": note,
            "geoEnabled": c.geo.enabled,
            "maxAreaKm": c.geo.max_area_km,
        })),
    )
        .into_response()
}

/// What one stream remembers between two events, to turn totals into rates.
struct Previous {
    at: Instant,
    messages: (u64, u64),
    buckets: Vec<u64>,
}

/// One stats stream: its slot, its timer, the shutdown it ends on.
struct StatsStream {
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    interval: tokio::time::Interval,
    previous: Option<Previous>,
}

/// `GET /dashboard/stats`: `event: stats` with one JSON object per
/// interval (see [`snapshot`]); ends at shutdown.
async fn stats(State(dash): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    if let Some(resp) = refusal(&dash.shared, &headers) {
        return resp;
    }
    let Ok(permit) = Arc::clone(&dash.streams).try_acquire_owned() else {
        let mut resp =
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "too many dashboard streams (DASHBOARD_MAX_STREAMS)");
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return resp;
    };
    let mut interval = tokio::time::interval(Duration::from_millis(dash.shared.config.http.dashboard_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = StatsStream { shared: Arc::clone(&dash.shared), _permit: permit, interval, previous: None };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        let shutdown = st.shared.shutdown.clone();
        tokio::select! {
            () = shutdown.cancelled() => None,
            _ = st.interval.tick() => {
                let body = snapshot(&st.shared, &mut st.previous);
                Some((Ok::<Event, Infallible>(Event::default().event("stats").data(body.to_string())), st))
            }
        }
    });
    let mut resp = Sse::new(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer (nginx) would hold the events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

/// The `q` quantile (0..1) of a histogram's observations given by bucket
/// upper bounds and per-bucket counts, interpolated linearly inside the
/// bucket as Prometheus' `histogram_quantile` does. `None` without
/// observations; the largest finite bound when the quantile is past it.
pub fn quantile(bounds: &[f64], counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = bounds.get(i) else { return bounds.last().copied() };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            return Some(lower + (upper - lower) * ((rank - below as f64) / n as f64).clamp(0.0, 1.0));
        }
        below += n;
    }
    bounds.last().copied()
}

/// One stats event: what `/ws/status` says, plus rates over the last
/// interval, publish→write latency percentiles of the last interval, slow
/// consumers, `/health`, and the busiest vendors.
fn snapshot(shared: &Shared, previous: &mut Option<Previous>) -> Value {
    let m = &shared.metrics;
    let status = crate::http::status_report(shared);
    let (health_code, health) = crate::http::health_report(shared);
    let now = Instant::now();
    let messages = m.totals();
    let histogram = m.publish_to_write.metric();
    let hist = histogram.get_histogram();
    let bounds: Vec<f64> = hist.get_bucket().iter().map(|b| b.upper_bound()).collect();
    let mut all: Vec<u64> = hist.get_bucket().iter().map(|b| b.cumulative_count()).collect();
    // The +Inf bucket, which the cumulative list leaves implicit.
    all.push(hist.get_sample_count());
    let per_bucket = |c: &[u64]| -> Vec<u64> {
        let mut prev = 0;
        c.iter()
            .map(|&v| {
                let d = v.saturating_sub(prev);
                prev = v;
                d
            })
            .collect()
    };
    let (rates, window) = match previous.as_ref() {
        Some(p) => {
            let secs = now.duration_since(p.at).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / secs;
            let window: Vec<u64> =
                per_bucket(&all).iter().zip(per_bucket(&p.buckets)).map(|(a, b)| a.saturating_sub(b)).collect();
            (json!({"in": rate(messages.0, p.messages.0), "out": rate(messages.1, p.messages.1)}), window)
        }
        None => (json!({"in": 0.0, "out": 0.0}), per_bucket(&all)),
    };
    let ms = |q: f64| quantile(&bounds, &window, q).map(|s| (s * 1e6).round() / 1e3);
    let top_n = shared.config.http.dashboard_top_vendors;
    let busiest: Vec<Value> =
        m.busiest.top(top_n).into_iter().map(|(v, n)| json!({"vendorId": v.as_str(), "updates": n})).collect();
    *previous = Some(Previous { at: now, messages, buckets: all });
    json!({
        "time": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        "status": status,
        "rates": rates,
        "latencyMs": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "observations": window.iter().sum::<u64>()},
        "slowConsumers": {"closed": m.slow_consumers_closed.get(), "conflated": m.conflated.get()},
        "areas": {"subscriptions": m.areas.get(), "cells": m.area_cells.get(), "vendors": m.area_vendors.get()},
        "health": {"httpStatus": health_code.as_u16(), "status": health["status"], "checks": health["checks"]},
        "connectionsMax": shared.config.limits.max_connections,
        "busiestVendors": busiest,
        "busiestHalfLifeSeconds": HALF_LIFE.as_secs(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let bounds = [1.0, 2.0, 4.0];
        // 10 in (0,1], 10 in (1,2], none in (2,4], none above.
        let counts = [10, 10, 0, 0];
        assert_eq!(quantile(&bounds, &counts, 0.5), Some(1.0));
        assert_eq!(quantile(&bounds, &counts, 0.75), Some(1.5));
        assert_eq!(quantile(&bounds, &counts, 0.25), Some(0.5));
        assert_eq!(quantile(&bounds, &[0, 0, 0, 0], 0.5), None);
        // Past the last finite bound: that bound.
        assert_eq!(quantile(&bounds, &[0, 0, 0, 3], 0.99), Some(4.0));
    }

    #[test]
    fn basic_and_bearer_credentials_are_both_read() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer s3cret"));
        assert_eq!(presented(&h).as_deref(), Some(&b"s3cret"[..]));
        // "admin:s3:cret" — the password may hold colons.
        let b64 = base64::engine::general_purpose::STANDARD.encode("admin:s3:cret");
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("basic {b64}")).unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(presented(&h).as_deref(), Some(&b"s3:cret"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(presented(&h), None);
    }
}
