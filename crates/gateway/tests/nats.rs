//! NATS as the bus (docs/protocol.md), against the machine's NATS and
//! nats-servers of the tests' own. Each test uses its own subject prefix.

mod common;

use std::time::Duration;

use common::nats::{MACHINE_NATS, OwnNats, Proxy, require_machine_nats, unique_prefix};
use common::{TestGateway, WsClient, test_config, wait_until};
use serde_json::{Value, json};

fn nats_config(url: &str, prefix: &str) -> venta_gateway::Config {
    let mut c = test_config();
    c.nats.url = Some(url.to_owned());
    c.nats.subject_prefix = prefix.to_owned();
    c.nats.interest_linger_ms = 100;
    c
}

/// A gateway on the machine's NATS under a fresh subject prefix, ready, and
/// a plain NATS client to publish with.
async fn ready_on_machine_nats() -> (String, TestGateway, async_nats::Client) {
    require_machine_nats();
    let prefix = unique_prefix();
    let gw = TestGateway::start_with(nats_config(MACHINE_NATS, &prefix)).await;
    wait_until("gateway ready", async || gw.is_ready().await).await;
    let nats = async_nats::connect(MACHINE_NATS).await.unwrap();
    (prefix, gw, nats)
}

#[tokio::test]
async fn a_nats_publish_reaches_a_websocket_client() {
    let (prefix, gw, nats) = ready_on_machine_nats().await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v1").await;
    c.subscribe("vendor", "v1").await;
    let payload =
        json!({"vendorId": "v1", "location": {"lat": 52.5, "long": 13.25}, "timestamp": "2026-11-30T10:00:00.5Z"});
    nats.publish(format!("{prefix}.location.v1"), payload.to_string().into()).await.unwrap();
    let u = c.recv().await;
    assert_eq!(u["type"], "location_updated");
    assert_eq!(u["data"]["location"], json!({"lat": 52.5, "long": 13.25}));
    assert_eq!(u["data"]["timestamp"], "2026-11-30T10:00:00.5Z");
    // A missing timestamp is stamped; extra vendor fields pass through.
    let payload = json!({"vendorId": "v1", "vendor": {"name": "Kebab", "hours": {"mon": "9-17"}}});
    nats.publish(format!("{prefix}.vendor.v1"), payload.to_string().into()).await.unwrap();
    let u = c.recv().await;
    assert_eq!(u["data"]["vendor"], json!({"name": "Kebab", "hours": {"mon": "9-17"}}));
    assert!(u["data"]["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    let (status, h) = gw.health().await;
    assert_eq!((status, h["checks"]["nats"]["status"].as_str()), (200, Some("ok")));
    gw.shutdown().await;
}

/// The `subscribed` ack promises every later update: a publish from
/// another NATS connection sent the moment the ack arrives must be
/// delivered. (A subscribe confirmed by a socket flush only, not a round
/// trip through the server, lost such updates under load.)
#[tokio::test]
async fn an_update_published_right_after_the_ack_is_delivered() {
    let (prefix, gw, nats) = ready_on_machine_nats().await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    for i in 0..50 {
        let vendor = format!("race{i}");
        c.subscribe("location", &vendor).await;
        let payload = json!({"vendorId": vendor, "location": {"lat": 1.0, "long": f64::from(i)}});
        nats.publish(format!("{prefix}.location.{vendor}"), payload.to_string().into()).await.unwrap();
        nats.flush().await.unwrap();
        let u = c.recv().await;
        assert_eq!((u["type"].as_str(), u["data"]["vendorId"].as_str()), (Some("location_updated"), Some(&*vendor)));
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn three_instances_each_deliver_a_publish_exactly_once() {
    require_machine_nats();
    let prefix = unique_prefix();
    let mut gateways = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let gw = TestGateway::start_with(nats_config(MACHINE_NATS, &prefix)).await;
        wait_until("gateway ready", async || gw.is_ready().await).await;
        let mut c = WsClient::connect(&gw.url("/ws/location")).await;
        c.subscribe("location", "v1").await;
        clients.push(c);
        gateways.push(gw);
    }
    // An HTTP publish on one instance goes through NATS to all of them.
    gateways[1].publish_location("v1", 7.5, 8.5).await;
    for c in &mut clients {
        let u = c.recv().await;
        assert_eq!(u["data"]["location"], json!({"lat": 7.5, "long": 8.5}));
        c.send_json(json!({"type": "ping", "id": "next"})).await;
        assert_eq!(c.recv().await, json!({"type": "pong", "id": "next"}), "exactly once: no duplicate before the pong");
    }
    for gw in gateways {
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn invalid_nats_payloads_are_counted_and_dropped() {
    let (prefix, gw, nats) = ready_on_machine_nats().await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v1").await;
    c.subscribe("vendor", "v1").await;
    let subject = format!("{prefix}.location.v1");
    let bad: Vec<String> = vec![
        "{not json".into(),
        "[]".into(),
        json!({"vendorId": "v1"}).to_string(),
        json!({"vendorId": "v1", "location": {"lat": 91, "long": 0}}).to_string(),
        json!({"vendorId": "v1", "location": {"lat": 0, "long": -181}}).to_string(),
        json!({"vendorId": "v2", "location": {"lat": 0, "long": 0}}).to_string(),
        json!({"vendorId": "v1", "location": {"lat": 0, "long": 0}, "timestamp": "soon"}).to_string(),
    ];
    for b in &bad {
        nats.publish(subject.clone(), b.clone().into()).await.unwrap();
    }
    nats.publish(format!("{prefix}.vendor.v1"), json!({"vendorId": "v1", "vendor": {}}).to_string().into())
        .await
        .unwrap();
    let good = json!({"vendorId": "v1", "location": {"lat": 1.5, "long": 1.5}});
    nats.publish(subject, good.to_string().into()).await.unwrap();
    let u = c.recv().await;
    assert_eq!(u["data"]["location"], json!({"lat": 1.5, "long": 1.5}), "only the valid update arrives");
    // The vendor-subject payload is read by another subscription's task, so
    // its count may land a moment after the location update arrives.
    wait_until("8 invalid payloads counted", async || {
        gw.shared.metrics.updates_invalid.with_label_values(&["nats"]).get() == 8
    })
    .await;
    c.send_json(json!({"type": "ping", "id": "alive"})).await;
    assert_eq!(c.recv().await["id"], "alive");
    gw.shutdown().await;
}

#[tokio::test]
async fn an_instance_holds_a_subject_only_while_it_has_a_subscriber() {
    let own = OwnNats::start().await;
    let prefix = unique_prefix();
    let gw = TestGateway::start_with(nats_config(&own.url(), &prefix)).await;
    wait_until("gateway ready", async || gw.is_ready().await).await;
    let subject = format!("{prefix}.location.v1");
    assert!(!own.subjects().await.contains(&subject));
    let mut a = WsClient::connect(&gw.url("/ws/location")).await;
    let mut b = WsClient::connect(&gw.url("/ws/location")).await;
    a.subscribe("location", "v1").await;
    b.subscribe("location", "v1").await;
    // The monitoring endpoint may lag the server's own state a little (that
    // the ack means a live subscription is shown by the delivery tests).
    wait_until("subject held", async || own.subjects().await.contains(&subject)).await;
    let subjects = own.subjects().await;
    assert_eq!(subjects.iter().filter(|s| **s == subject).count(), 1, "one NATS subscription for two clients");
    a.send_json(json!({"type": "unsubscribe_location", "data": {"vendorId": "v1"}})).await;
    assert_eq!(a.recv().await["type"], "unsubscribed");
    // The unwatch is done by the ack: b's unit of interest holds the
    // subject, and no release is pending.
    let stats = gw.shared.bus.stats();
    assert_eq!((stats.interests, stats.lingering), (1, 0), "still held while b is subscribed");
    // A bounded negative check, not synchronisation: four lingers (100 ms)
    // pass without the subject being released.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(own.subjects().await.contains(&subject), "still held while b is subscribed");
    drop(b); // disconnect-time cleanup releases the interest
    wait_until("subject released", async || !own.subjects().await.contains(&subject)).await;
    // And taken again on demand.
    a.subscribe("location", "v1").await;
    wait_until("subject held again", async || own.subjects().await.contains(&subject)).await;
    gw.shutdown().await;
}

#[tokio::test]
async fn snapshot_on_subscribe_survives_a_gateway_restart() {
    let own = OwnNats::start().await;
    let prefix = unique_prefix();
    let js_ok = async |gw: &TestGateway| gw.health().await.1["checks"]["jetstream"]["status"] == "ok";
    let gw = TestGateway::start_with(nats_config(&own.url(), &prefix)).await;
    wait_until("JetStream ready", async || js_ok(&gw).await).await;
    gw.publish_location("v9", 10.5, 20.5).await;
    gw.publish_location("v9", 11.5, 21.5).await;
    gw.publish_vendor("v9", json!({"name": "Pho"})).await;
    assert!(gw.shutdown().await);

    let gw = TestGateway::start_with(nats_config(&own.url(), &prefix)).await;
    wait_until("JetStream ready", async || js_ok(&gw).await).await;
    let mut c = WsClient::connect(&gw.url("/ws/vendor")).await;
    c.subscribe("location", "v9").await;
    let snap = c.recv().await;
    assert_eq!(snap["data"]["location"], json!({"lat": 11.5, "long": 21.5}));
    assert_eq!(snap["data"]["snapshot"], true);
    c.subscribe("vendor", "v9").await;
    let snap = c.recv().await;
    assert_eq!((snap["data"]["vendor"]["name"].as_str(), &snap["data"]["snapshot"]), (Some("Pho"), &json!(true)));
    // Live updates after the snapshot are not snapshots.
    gw.publish_location("v9", 12.5, 22.5).await;
    let live = c.recv().await;
    assert_eq!((live["data"]["location"]["lat"].as_f64(), live["data"].get("snapshot")), (Some(12.5), None));
    gw.shutdown().await;
}

#[tokio::test]
async fn nats_outage_keeps_clients_and_recovers_without_them_reconnecting() {
    let own = OwnNats::start().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", own.port).parse().unwrap()).await;
    let prefix = unique_prefix();
    let gw = TestGateway::start_with(nats_config(&format!("nats://{}", proxy.addr), &prefix)).await;
    wait_until("gateway ready", async || gw.is_ready().await).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v1").await;
    let direct = async_nats::connect(own.url()).await.unwrap();

    proxy.cut();
    wait_until("readiness 503", async || !gw.is_ready().await).await;
    let (status, h) = gw.health().await;
    assert_eq!(
        (status, h["status"].as_str(), h["checks"]["nats"]["status"].as_str()),
        (503, Some("down"), Some("down"))
    );
    let r = reqwest::Client::new()
        .post(gw.http("/api/v1/publish/location"))
        .json(&json!({"vendorId": "v1", "location": {"lat": 0, "long": 0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "publishes are refused cleanly while NATS is down");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    // The client is still connected and served.
    c.send_json(json!({"type": "ping", "id": "during"})).await;
    assert_eq!(c.recv().await["id"], "during");

    proxy.restore();
    wait_until("ready again", async || gw.is_ready().await).await;
    // The subscription was restored with no client action.
    direct
        .publish(
            format!("{prefix}.location.v1"),
            json!({"vendorId": "v1", "location": {"lat": 5.5, "long": 6.5}}).to_string().into(),
        )
        .await
        .unwrap();
    let u = c.recv().await;
    assert_eq!(u["data"]["location"], json!({"lat": 5.5, "long": 6.5}));
    let metrics = gw.shared.metrics.render();
    assert!(metrics.contains("venta_bus_disconnects_total 1"), "{metrics}");
    assert!(!metrics.contains("venta_bus_outage_seconds_total 0\n"), "the gap is visible: {metrics}");
    gw.shutdown().await;
}

/// A nats-server of the test's own on a port the test chooses, so it can be
/// killed and started again on the same address, with a fresh store.
struct PortNats {
    child: std::process::Child,
    _dir: common::nats::tempdir::Dir,
}

impl PortNats {
    async fn start(port: u16, jetstream: bool) -> Self {
        let dir = common::nats::tempdir::Dir::new();
        let monitor = common::free_port();
        let mut cmd = std::process::Command::new(common::nats::nats_server_bin());
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string()]);
        if jetstream {
            cmd.arg("-js").arg("-sd").arg(&dir.0);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start nats-server");
        let me = Self { child, _dir: dir };
        wait_until("nats-server up", async || {
            reqwest::get(format!("http://127.0.0.1:{monitor}/healthz")).await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        me
    }
}

impl Drop for PortNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A NATS that comes back without its state (a fresh server, empty store,
/// same address): while the stream is missing `/health` says JetStream is
/// down, and once it is back the gateway has set the stream up again, so
/// new subscribers get snapshots again.
#[tokio::test]
async fn jetstream_is_set_up_again_when_nats_returns_without_its_state() {
    let port = common::free_port();
    let prefix = unique_prefix();
    let mut config = nats_config(&format!("nats://127.0.0.1:{port}"), &prefix);
    config.nats.health_probe_interval_ms = 200;
    let js = async |gw: &TestGateway| gw.health().await.1["checks"]["jetstream"]["status"].as_str().map(str::to_owned);
    let server = PortNats::start(port, true).await;
    let gw = TestGateway::start_with(config).await;
    wait_until("JetStream ready", async || js(&gw).await.as_deref() == Some("ok")).await;
    gw.publish_location("v1", 1.5, 2.5).await;
    drop(server);
    // Back without JetStream at all: the stream cannot exist.
    let server = PortNats::start(port, false).await;
    wait_until("NATS reconnected", async || gw.is_ready().await).await;
    wait_until("JetStream reported down", async || js(&gw).await.as_deref() == Some("down")).await;
    drop(server);
    // Back with JetStream and an empty store.
    let _server = PortNats::start(port, true).await;
    wait_until("JetStream ok again", async || js(&gw).await.as_deref() == Some("ok")).await;
    gw.publish_location("v1", 3.5, 4.5).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v1").await;
    let snap = c.recv().await;
    assert_eq!(
        (&snap["data"]["location"], &snap["data"]["snapshot"]),
        (&json!({"lat": 3.5, "long": 4.5}), &json!(true))
    );
    gw.shutdown().await;
}

/// A stream made by an older gateway (no byte limits) gets the configured
/// limits instead of being taken as it is.
#[tokio::test]
async fn an_existing_stream_is_updated_to_the_byte_limits() {
    let own = OwnNats::start().await;
    let prefix = unique_prefix();
    let name = format!("{}_LAST_VALUES", prefix.to_uppercase());
    let js = async_nats::jetstream::new(async_nats::connect(own.url()).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        max_messages_per_subject: 1,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut config = nats_config(&own.url(), &prefix);
    config.nats.stream_max_bytes = 1 << 20;
    let gw = TestGateway::start_with(config).await;
    wait_until("JetStream ready", async || gw.health().await.1["checks"]["jetstream"]["status"] == "ok").await;
    let info = js.get_stream(&name).await.unwrap().info().await.unwrap().config.clone();
    assert_eq!((info.max_bytes, info.max_message_size), (1 << 20, 64 * 1024));
    gw.shutdown().await;
}

/// Subscribing to and leaving many distinct vendors leaves nothing behind
/// once the linger is over: no interest, no pending linger. A watch whose
/// caller went away mid-subscribe counts as never made.
#[tokio::test]
async fn distinct_subscribe_unsubscribe_pairs_leave_no_state_behind() {
    require_machine_nats();
    let mut config = nats_config(MACHINE_NATS, &unique_prefix());
    config.limits.rate_limit = 100_000;
    let gw = TestGateway::start_with(config).await;
    wait_until("gateway ready", async || gw.is_ready().await).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    for i in 0..300 {
        let vendor = format!("d{i}");
        c.subscribe("location", &vendor).await;
        c.send_json(json!({"type": "unsubscribe_location", "data": {"vendorId": vendor}})).await;
        assert_eq!(c.recv().await["type"], "unsubscribed");
    }
    let bus = gw.shared.bus.clone();
    for i in 0..50 {
        let topic = venta_gateway::protocol::Topic::new(
            venta_gateway::protocol::Channel::Vendor,
            venta_gateway::protocol::VendorId::parse(&format!("abandoned{i}")).unwrap(),
        );
        // Dropped after its first poll, before NATS confirmed the SUB.
        if let Some(done) = futures_util::FutureExt::now_or_never(bus.watch(&topic)) {
            panic!("a watch resolved without a round trip: {done:?}");
        }
    }
    assert!(bus.stats().interests > 0, "held right after: {:?}", bus.stats());
    wait_until("no interest left", async || {
        let s = bus.stats();
        s.interests == 0 && s.lingering == 0
    })
    .await;
    drop(c);
    gw.shutdown().await;
}

/// `NATS_URL` may list several servers; an unreachable one is skipped.
#[tokio::test]
async fn a_comma_separated_nats_url_is_a_server_list() {
    require_machine_nats();
    let prefix = unique_prefix();
    let dead = common::free_port();
    let gw = TestGateway::start_with(nats_config(&format!("nats://127.0.0.1:{dead}, {MACHINE_NATS}"), &prefix)).await;
    wait_until("gateway ready", async || gw.is_ready().await).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v1").await;
    gw.publish_location("v1", 1.0, 2.0).await;
    assert_eq!(c.recv().await["data"]["location"], json!({"lat": 1.0, "long": 2.0}));
    gw.shutdown().await;
}
