//! WebTransport in a real browser: headless Chromium (Debian's `chromium`)
//! loads a page served by this test over plain http on loopback, runs the
//! project's JS client (`VentaWebTransportClient` from the self-contained
//! browser bundle of clients/js, which `npm run build` makes), pins the certificate hash from /wt/cert-hash, subscribes, and
//! shows published updates. The test reads the result from `--dump-dom`
//! (a `/wait` stylesheet holds the load event until the page reported) and
//! checks every message the page received against `schemas/server/any.json`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestGateway, assert_schema, test_config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

/// What the page tells the test.
#[derive(Debug)]
enum PageEvent {
    Subscribed,
    Updated,
    Report(Value),
}

/// The page, the JS client's files, and the /subscribed, /report and /wait
/// endpoints of the dump-dom trick.
struct PageServer {
    addr: std::net::SocketAddr,
    events: mpsc::UnboundedReceiver<PageEvent>,
}

/// The JS client's browser bundle (built here if missing or stale); without
/// it every page here would fail with an opaque import error.
fn require_client_bundle() {
    let bundle = common::js_client().join("dist/venta-realtime.browser.js");
    assert!(
        bundle.is_file(),
        "{} is missing: build the JS client first (npm --prefix clients/js ci && npm --prefix clients/js run build; .ci/js.sh does it)",
        bundle.display()
    );
}

impl PageServer {
    async fn start(page: String) -> Self {
        require_client_bundle();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, events) = mpsc::unbounded_channel();
        let reported = Arc::new(Notify::new());
        let page = Arc::new(page);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                tokio::spawn(serve(stream, Arc::clone(&page), tx.clone(), Arc::clone(&reported)));
            }
        });
        Self { addr, events }
    }

    async fn next(&mut self) -> PageEvent {
        tokio::time::timeout(Duration::from_secs(30), self.events.recv())
            .await
            .expect("the page went silent")
            .expect("page server gone")
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn serve(mut stream: TcpStream, page: Arc<String>, tx: mpsc::UnboundedSender<PageEvent>, reported: Arc<Notify>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if req.len() > 64 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&req).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    // Shown when a test fails: what the browser asked for.
    if path == "/log" {
        eprintln!("page: {}", percent_decode(query.strip_prefix("m=").unwrap_or(query)));
    } else {
        eprintln!("page server: GET {}", &target[..target.len().min(200)]);
    }
    let (status, ctype, body): (&str, &str, Vec<u8>) = match path {
        "/" => ("200 OK", "text/html; charset=utf-8", page.as_bytes().to_vec()),
        "/log" => ("204 No Content", "text/plain", Vec::new()),
        "/subscribed" => {
            let _ = tx.send(PageEvent::Subscribed);
            ("204 No Content", "text/plain", Vec::new())
        }
        "/updated" => {
            let _ = tx.send(PageEvent::Updated);
            ("204 No Content", "text/plain", Vec::new())
        }
        "/report" => {
            let r = query.strip_prefix("r=").map(percent_decode).unwrap_or_default();
            let v = serde_json::from_str(&r)
                .unwrap_or_else(|e| json!({"ok": false, "error": format!("bad report {r}: {e}")}));
            let _ = tx.send(PageEvent::Report(v));
            reported.notify_waiters();
            reported.notify_one();
            ("204 No Content", "text/plain", Vec::new())
        }
        "/wait" => {
            // Holds the page's load event (and so --dump-dom) until it reported.
            let _ = tokio::time::timeout(Duration::from_secs(20), reported.notified()).await;
            ("200 OK", "text/css", Vec::new())
        }
        p if p.starts_with("/client/") => {
            let rel = &p["/client/".len()..];
            let safe = !rel.contains("..")
                && rel.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_'))
                && (rel.ends_with(".js") || rel.ends_with(".mjs"));
            match safe.then(|| std::fs::read(common::root().join("clients/js").join(rel))) {
                Some(Ok(bytes)) => ("200 OK", "text/javascript; charset=utf-8", bytes),
                _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
            }
        }
        _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

/// The page: subscribes to a vendor's location (as datagrams) and data,
/// tells the test once both are acknowledged, reports what arrived (with
/// `await_close`: once the session has closed after that).
fn page(wt_url: &str, hash_url: &str, vendor: &str, await_close: bool) -> String {
    let cfg = json!({"wtUrl": wt_url, "hashUrl": hash_url, "vendor": vendor, "awaitClose": await_close});
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>PENDING</title></head>
<body>
<pre id="out">PENDING</pre>
<script>
// Uncaught errors reach the test output (shown when it fails).
window.addEventListener('error', (e) => fetch('/log?m=' + encodeURIComponent('uncaught ' + e.message + ' at ' + e.filename + ':' + e.lineno)));
</script>
<script>
// A classic script with a dynamic import: a module script would wait for the
// /wait stylesheet below (deferred scripts run after script-blocking styles).
(async () => {{
const {{ VentaWebTransportClient }} = await import('/client/dist/venta-realtime.browser.js');
const cfg = {cfg};
const out = document.getElementById('out');
const seen = [];
let done = false;
let client = null;
const finish = (result) => {{
  if (done) return;
  done = true;
  const text = JSON.stringify(result);
  out.textContent = text;
  document.title = result.ok ? 'PASS' : 'FAIL';
  fetch('/report?r=' + encodeURIComponent(text));
}};
window.addEventListener('error', (e) => finish({{ ok: false, error: String(e.message) }}));
window.addEventListener('unhandledrejection', (e) => finish({{ ok: false, error: String(e.reason) }}));
setTimeout(() => finish({{ ok: false, error: 'timeout', seen, transport: client && client.transport }}), 20000);
const got = {{}};
const check = () => {{
  if (!got.location || !got.vendor) return;
  const result = {{ ok: true, transport: client.transport, location: got.location, vendor: got.vendor, seen }};
  if (!cfg.awaitClose) return finish(result);
  client.onClose = (ev) => finish({{ ...result, close: {{ code: ev.code, reason: ev.reason }} }});
  fetch('/updated');
}};
// The client's log lines go to the test's output (shown when it fails).
const say = (level) => (...args) => fetch('/log?m=' + encodeURIComponent(level + ' ' + args.map(String).join(' ')));
const logger = {{ log: say('log'), warn: say('warn'), error: say('error') }};
// No WebSocket fallback here: this page is about WebTransport.
client = new VentaWebTransportClient(cfg.wtUrl, {{ certificateHashUrl: cfg.hashUrl, logger, webTransportAttempts: 1000, maxReconnectAttempts: 0 }});
let acks = 0;
client.onSubscribed = (data, m) => {{ seen.push(m); if (++acks === 2) fetch('/subscribed'); }};
client.onLocationUpdate = (data, m) => {{ seen.push(m); got.location = m; check(); }};
client.onVendorUpdate = (data, m) => {{ seen.push(m); got.vendor = m; check(); }};
client.onError = (data, m) => {{ seen.push(m); finish({{ ok: false, error: 'gateway error', seen }}); }};
client.onGiveUp = () => finish({{ ok: false, error: 'could not connect', seen }});
client.subscribeToLocation(cfg.vendor, 'u1', {{ delivery: 'datagram' }});
client.subscribeToVendor(cfg.vendor, 'u1');
}})().catch((e) => fetch('/report?r=' + encodeURIComponent(JSON.stringify({{ ok: false, error: String(e) }}))));
</script>
<link rel="stylesheet" href="/wait">
</body></html>
"#
    )
}

fn html_unescape(s: &str) -> String {
    s.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&#39;", "'").replace("&amp;", "&")
}

async fn metric(http_base: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("{http_base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

/// Runs Chromium on the page while publishing once the page subscribed;
/// returns the page's report as read from the dumped DOM. `http_base` is
/// the gateway's HTTP side as the page and the publisher reach it.
/// With `stop`, that gateway is shut down once the page got its updates.
async fn run_page(http_base: &str, wt_url: &str, vendor: &str, mut stop: Option<TestGateway>) -> Value {
    let hash_url = format!("{http_base}/wt/cert-hash");
    let mut server = PageServer::start(page(wt_url, &hash_url, vendor, stop.is_some())).await;
    let (child, profile) = common::chromium_dump_dom(&format!("http://{}/", server.addr));
    let browser = tokio::spawn(tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()));

    let mut report = None;
    let mut published = false;
    while report.is_none() {
        match server.next().await {
            PageEvent::Subscribed if !published => {
                published = true;
                let location = json!({"vendorId": vendor, "location": {"lat": 48.8584, "long": 2.2945}});
                common::publish(&format!("{http_base}/api/v1/publish/location"), &location).await;
                let data = json!({"vendorId": vendor, "vendor": {"name": "Crêpes", "tags": ["sweet", "savoury"], "open": true}});
                common::publish(&format!("{http_base}/api/v1/publish/vendor"), &data).await;
            }
            PageEvent::Subscribed => {}
            PageEvent::Updated => {
                if let Some(gw) = stop.take() {
                    assert!(gw.shutdown().await, "shutdown finished in time");
                }
            }
            PageEvent::Report(v) => report = Some(v),
        }
    }
    let output = browser.await.unwrap().expect("chromium did not finish within 60 s").expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout);
    let start = dom.find(r#"<pre id="out">"#).unwrap_or_else(|| panic!("no result element in the DOM:\n{dom}"));
    let rest = &dom[start + r#"<pre id="out">"#.len()..];
    let text = html_unescape(&rest[..rest.find("</pre>").expect("</pre>")]);
    let from_dom: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("DOM result is not JSON ({e}): {text}"));
    assert_eq!(Some(&from_dom), report.as_ref(), "the dumped DOM shows what the page reported");
    from_dom
}

fn check_report(r: &Value, vendor: &str) {
    assert_eq!(r["ok"], true, "page failed: {r}");
    assert_eq!(r["transport"], "webtransport", "{r}");
    let location = &r["location"];
    assert_eq!(location["type"], "location_updated");
    assert_eq!(location["data"]["vendorId"], vendor);
    assert_eq!(location["data"]["location"], json!({"lat": 48.8584, "long": 2.2945}));
    let v = &r["vendor"];
    assert_eq!(v["data"]["vendor"], json!({"name": "Crêpes", "tags": ["sweet", "savoury"], "open": true}));
    let seen = r["seen"].as_array().expect("seen");
    assert!(seen.len() >= 4, "{r}");
    for m in seen {
        assert_schema("server/any.json", m);
    }
}

#[tokio::test]
async fn chromium_receives_updates_over_webtransport() {
    let gw = TestGateway::start().await;
    let vendor = "browser1";
    let base = gw.http("");
    let report = run_page(&base, &gw.wt_url("/wt/location"), vendor, None).await;
    check_report(&report, vendor);
    // The location update went as a datagram, the rest on the stream.
    assert_eq!(metric(&base, r#"venta_webtransport_datagrams_total{outcome="sent"}"#).await, 1.0);
    assert!(metric(&base, r#"venta_messages_out_total{transport="webtransport",type="vendor_updated"}"#).await >= 1.0);
    gw.shutdown().await;
}

/// The default bind address `::` is dual-stack: Chromium resolves
/// `localhost` to ::1 first and must reach the gateway there.
#[tokio::test]
async fn chromium_reaches_a_dual_stack_gateway_at_localhost() {
    std::net::UdpSocket::bind("[::1]:0")
        .expect("this test needs IPv6 loopback (::1), as the default BIND_ADDR :: does");
    let mut config = test_config();
    config.server.bind_addr = "::".parse().unwrap();
    let gw = TestGateway::start_with(config).await;
    let wt_url = format!("https://localhost:{}/wt/vendor", gw.wt_addr.port());
    let report = run_page(&format!("http://localhost:{}", gw.addr.port()), &wt_url, "browser2", None).await;
    check_report(&report, "browser2");
    gw.shutdown().await;
}

/// Graceful shutdown reaches the browser as the end of the session.
#[tokio::test]
async fn chromium_sees_the_session_end_on_gateway_shutdown() {
    let gw = TestGateway::start().await;
    let (base, wt_url) = (gw.http(""), gw.wt_url("/wt/location"));
    let report = run_page(&base, &wt_url, "browser3", Some(gw)).await;
    check_report(&report, "browser3");
    // The gateway finishes the stream, then closes with 1001; the code itself
    // does not reach a browser (wtransport closes QUIC, it sends no
    // CLOSE_WEBTRANSPORT_SESSION), so the client reports 1005 ("no status"),
    // or 1006 if the connection close overtook the end of the stream.
    let code = report["close"]["code"].as_u64();
    assert!(matches!(code, Some(1005 | 1006)), "{report}");
}

/// The area page: subscribes a box (moves inside as datagrams), tells the
/// test `/subscribed` once the snapshot shows the vendor published before,
/// `/updated` once a second vendor entered and the first moved inside, and
/// reports once the second left.
fn area_page(wt_url: &str, hash_url: &str, bbox: &Value) -> String {
    let cfg = json!({"wtUrl": wt_url, "hashUrl": hash_url, "bbox": bbox});
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>PENDING</title></head>
<body>
<pre id="out">PENDING</pre>
<script>
window.addEventListener('error', (e) => fetch('/log?m=' + encodeURIComponent('uncaught ' + e.message + ' at ' + e.filename + ':' + e.lineno)));
</script>
<script>
(async () => {{
const {{ VentaWebTransportClient }} = await import('/client/dist/venta-realtime.browser.js');
const cfg = {cfg};
const out = document.getElementById('out');
const seen = [];
let done = false;
let client = null;
const finish = (result) => {{
  if (done) return;
  done = true;
  const text = JSON.stringify(result);
  out.textContent = text;
  document.title = result.ok ? 'PASS' : 'FAIL';
  fetch('/report?r=' + encodeURIComponent(text));
}};
window.addEventListener('unhandledrejection', (e) => finish({{ ok: false, error: String(e.reason) }}));
setTimeout(() => finish({{ ok: false, error: 'timeout', seen, transport: client && client.transport }}), 20000);
const say = (level) => (...args) => fetch('/log?m=' + encodeURIComponent(level + ' ' + args.map(String).join(' ')));
const logger = {{ log: say('log'), warn: say('warn'), error: say('error') }};
client = new VentaWebTransportClient(cfg.wtUrl, {{ certificateHashUrl: cfg.hashUrl, logger, webTransportAttempts: 1000, maxReconnectAttempts: 0 }});
const got = {{}};
const vendors = () => [...client.areaVendors('map').values()].sort((a, b) => (a.vendorId < b.vendorId ? -1 : 1));
client.onSubscribed = (data, m) => seen.push(m);
client.onAreaSnapshot = (data, m) => {{
  seen.push(m);
  if (!data.vendors.some((v) => v.vendorId === 'bv1')) return finish({{ ok: false, error: 'bv1 not in the snapshot', seen }});
  got.snapshot = vendors();
  fetch('/subscribed');
}};
const step = () => {{ if (got.entered && got.moved) fetch('/updated'); }};
client.onVendorEntered = (data, m) => {{ seen.push(m); got.entered = m; step(); }};
client.onAreaLocationUpdate = (data, m) => {{ seen.push(m); got.moved = m; step(); }};
client.onVendorLeft = (data, m) => {{
  seen.push(m);
  finish({{ ok: true, transport: client.transport, snapshot: got.snapshot, entered: got.entered, moved: got.moved, left: m, vendors: vendors(), seen }});
}};
client.onLocationUpdate = (data, m) => {{ seen.push(m); finish({{ ok: false, error: 'a per-vendor update without a per-vendor subscription', seen }}); }};
client.onError = (data, m) => {{ seen.push(m); finish({{ ok: false, error: 'gateway error', seen }}); }};
client.onGiveUp = () => finish({{ ok: false, error: 'could not connect', seen }});
client.subscribeArea('map', {{ bbox: cfg.bbox }}, {{ userId: 'u1', delivery: 'datagram' }});
}})().catch((e) => fetch('/report?r=' + encodeURIComponent(JSON.stringify({{ ok: false, error: String(e) }}))));
</script>
<link rel="stylesheet" href="/wait">
</body></html>
"#
    )
}

/// Areas in Chromium over WebTransport: the snapshot has the vendor
/// published before; a publish inside gives vendor_entered, a move inside
/// location_updated with areaId (as a datagram), a publish outside
/// vendor_left with reason moved; the client's areaVendors follows.
#[tokio::test]
async fn chromium_follows_an_area_over_webtransport() {
    const SOL: (f64, f64) = (40.4169, -3.7035);
    let gw = TestGateway::start().await;
    let base = gw.http("");
    let publish_at = async |vendor: &str, lat: f64, long: f64, ts: &str| {
        let body = json!({"vendorId": vendor, "location": {"lat": lat, "long": long}, "timestamp": ts});
        common::publish(&format!("{base}/api/v1/publish/location"), &body).await;
    };
    publish_at("bv1", SOL.0, SOL.1, "2026-01-01T10:00:00Z").await;
    let bbox = json!({"south": SOL.0 - 0.009, "west": SOL.1 - 0.012, "north": SOL.0 + 0.009, "east": SOL.1 + 0.012});
    let page = area_page(&gw.wt_url("/wt/location"), &format!("{base}/wt/cert-hash"), &bbox);
    let mut server = PageServer::start(page).await;
    let (child, profile) = common::chromium_dump_dom(&format!("http://{}/", server.addr));
    let browser = tokio::spawn(tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()));

    let (mut entered_sent, mut left_sent) = (false, false);
    let report = loop {
        match server.next().await {
            PageEvent::Subscribed if !entered_sent => {
                entered_sent = true;
                publish_at("bv2", SOL.0 + 0.001, SOL.1, "2026-01-01T10:00:01Z").await;
                publish_at("bv1", SOL.0 + 0.002, SOL.1, "2026-01-01T10:00:02Z").await;
            }
            PageEvent::Updated if !left_sent => {
                left_sent = true;
                publish_at("bv2", SOL.0 + 0.5, SOL.1, "2026-01-01T10:00:03Z").await;
            }
            PageEvent::Subscribed | PageEvent::Updated => {}
            PageEvent::Report(v) => break v,
        }
    };
    let output = browser.await.unwrap().expect("chromium did not finish within 60 s").expect("chromium output");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout);
    let start = dom.find(r#"<pre id="out">"#).unwrap_or_else(|| panic!("no result element in the DOM:\n{dom}"));
    let rest = &dom[start + r#"<pre id="out">"#.len()..];
    let from_dom: Value = serde_json::from_str(&html_unescape(&rest[..rest.find("</pre>").expect("</pre>")])).unwrap();
    assert_eq!(from_dom, report, "the dumped DOM shows what the page reported");

    let r = &report;
    assert_eq!(r["ok"], true, "page failed: {r}");
    assert_eq!(r["transport"], "webtransport", "{r}");
    let at = |lat: f64, ts: &str| json!({"location": {"lat": lat, "long": SOL.1}, "timestamp": ts});
    let member = |id: &str, lat: f64, ts: &str| {
        let mut v = at(lat, ts);
        v["vendorId"] = json!(id);
        v
    };
    assert_eq!(r["snapshot"], json!([member("bv1", SOL.0, "2026-01-01T10:00:00Z")]), "{r}");
    assert_eq!(r["entered"]["type"], "vendor_entered");
    assert_eq!(r["entered"]["data"]["vendorId"], "bv2");
    assert_eq!(
        r["moved"],
        json!({"type": "location_updated", "data": {"vendorId": "bv1", "location": {"lat": SOL.0 + 0.002, "long": SOL.1},
            "timestamp": "2026-01-01T10:00:02Z", "areaId": "map"}})
    );
    assert_eq!(
        r["left"],
        json!({"type": "vendor_left", "data": {"areaId": "map", "vendorId": "bv2", "reason": "moved"}})
    );
    assert_eq!(r["vendors"], json!([member("bv1", SOL.0 + 0.002, "2026-01-01T10:00:02Z")]), "{r}");
    let seen = r["seen"].as_array().expect("seen");
    assert_eq!(seen.len(), 5, "subscribed, snapshot, entered, moved, left: {r}");
    for m in seen {
        assert_schema("server/any.json", m);
    }
    // The move inside went as a datagram; the rest on the stream.
    assert_eq!(metric(&base, r#"venta_webtransport_datagrams_total{outcome="sent"}"#).await, 1.0);
    assert!(metric(&base, r#"venta_messages_out_total{transport="webtransport",type="vendor_left"}"#).await >= 1.0);
    gw.shutdown().await;
}
