//! Area subscriptions across instances: three gateways on a NATS server of
//! the test's own (JetStream: the shared positions live in KV), backends
//! publishing straight onto `<prefix>.location.<vendor>`, an instance
//! started after the updates, and NATS interest that follows the areas.

mod common;

use std::collections::BTreeMap;

use common::nats::{OwnNats, unique_prefix};
use common::{TestGateway, WsClient, test_config, wait_until};
use serde_json::{Value, json};

const SOL: (f64, f64) = (40.4169, -3.7035);
const TOKYO: (f64, f64) = (35.6812, 139.7671);

async fn gateway(nats: &OwnNats, prefix: &str) -> TestGateway {
    let mut config = test_config();
    config.nats.url = Some(nats.url());
    config.nats.subject_prefix = prefix.to_owned();
    TestGateway::start_with(config).await
}

fn around(id: &str, (lat, long): (f64, f64)) -> Value {
    json!({"type": "subscribe_area", "id": id, "data": {"areaId": id, "userId": "u1",
        "bbox": {"south": lat - 0.009, "west": long - 0.012, "north": lat + 0.009, "east": long + 0.012}}})
}

async fn subscribe(c: &mut WsClient, msg: Value) -> Vec<String> {
    c.send_json(msg).await;
    let ack = c.recv().await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    let snap = c.recv().await;
    assert_eq!(snap["type"], "area_snapshot", "{snap}");
    snap["data"]["vendors"]
        .as_array()
        .map(|v| v.iter().map(|e| e["vendorId"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default()
}

/// A backend publishing raw JSON onto the vendor's subject.
async fn raw(client: &async_nats::Client, prefix: &str, vendor: &str, (lat, long): (f64, f64), ts: &str) {
    let body = json!({"vendorId": vendor, "location": {"lat": lat, "long": long}, "timestamp": ts});
    client.publish(format!("{prefix}.location.{vendor}"), body.to_string().into()).await.unwrap();
    client.flush().await.unwrap();
}

/// Per gateway connection: messages NATS delivered on its `<prefix>.geo.*`
/// subscriptions, keyed by the cells it subscribes.
async fn geo_deliveries(nats: &OwnNats, prefix: &str) -> Vec<(Vec<String>, u64)> {
    let url = format!("http://127.0.0.1:{}/connz?subs=detail&limit=1000", nats.monitor_port);
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    let mut out = Vec::new();
    for conn in v["connections"].as_array().cloned().unwrap_or_default() {
        let geo_prefix = format!("{prefix}.geo.");
        let subs: Vec<Value> = conn["subscriptions_list_detail"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s["subject"].as_str().is_some_and(|x| x.starts_with(&geo_prefix)))
            .collect();
        if subs.is_empty() {
            continue;
        }
        let mut cells: Vec<String> = subs.iter().filter_map(|s| s["subject"].as_str().map(str::to_owned)).collect();
        cells.sort();
        out.push((cells, subs.iter().map(|s| s["msgs"].as_u64().unwrap_or(0)).sum()));
    }
    out
}

#[tokio::test]
async fn three_instances_see_raw_publishes_in_their_areas_and_only_there() {
    let nats = OwnNats::start().await;
    let prefix = unique_prefix();
    let gws = [gateway(&nats, &prefix).await, gateway(&nats, &prefix).await, gateway(&nats, &prefix).await];
    let backend = async_nats::connect(nats.url()).await.unwrap();
    let mut madrid_a = WsClient::connect(&gws[0].url("/ws/location")).await;
    let mut madrid_b = WsClient::connect(&gws[1].url("/ws/location")).await;
    let mut tokyo = WsClient::connect(&gws[2].url("/ws/location")).await;
    assert!(subscribe(&mut madrid_a, around("a", SOL)).await.is_empty());
    assert!(subscribe(&mut madrid_b, around("b", SOL)).await.is_empty());
    assert!(subscribe(&mut tokyo, around("t", TOKYO)).await.is_empty());

    // Many updates of one vendor, handled by whichever instance the queue
    // group picks: in, a move inside, out. Both Madrid clients see exactly
    // that sequence; nothing twice.
    let steps = [(SOL.0, SOL.1), (SOL.0 + 0.001, SOL.1), (SOL.0 + 0.5, SOL.1)];
    for (i, p) in steps.iter().enumerate() {
        raw(&backend, &prefix, "v1", *p, &format!("2026-01-01T10:00:0{i}Z")).await;
        // One at a time, so the expected sequence is defined.
        for c in [&mut madrid_a, &mut madrid_b] {
            let m = c.recv().await;
            let expected = ["vendor_entered", "location_updated", "vendor_left"][i];
            assert_eq!(m["type"], expected, "{m}");
        }
    }
    // Tokyo heard nothing of it (a ping answered proves the queue is empty).
    tokyo.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(tokyo.recv().await, json!({"type": "pong", "id": "p"}));

    // Far-away traffic: 60 updates in Madrid reach the Madrid instances'
    // cell subscriptions, never Tokyo's.
    for i in 0..60 {
        let p = (SOL.0 + f64::from(i % 5) * 0.001, SOL.1);
        raw(&backend, &prefix, &format!("m{i}"), p, "2026-01-01T10:01:00Z").await;
    }
    for c in [&mut madrid_a, &mut madrid_b] {
        for _ in 0..60 {
            assert_eq!(c.recv().await["type"], "vendor_entered");
        }
    }
    let per_conn = geo_deliveries(&nats, &prefix).await;
    eprintln!("geo deliveries per instance (cells subscribed, messages): {per_conn:?}");
    assert_eq!(per_conn.len(), 3, "one connection per instance with cell subscriptions: {per_conn:?}");
    let (madrid, far): (Vec<_>, Vec<_>) = per_conn.iter().partition(|(_, n)| *n > 0);
    assert_eq!(madrid.len(), 2, "the two Madrid instances got the Madrid traffic: {per_conn:?}");
    assert_eq!(far.len(), 1, "the Tokyo instance got none of it: {per_conn:?}");
    assert!(madrid.iter().all(|(_, n)| *n >= 63), "every update reached each Madrid instance: {per_conn:?}");
    for gw in gws {
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn a_new_instance_knows_who_is_inside_and_a_move_between_cells_is_seen_leaving() {
    let nats = OwnNats::start().await;
    let prefix = unique_prefix();
    let first = gateway(&nats, &prefix).await;
    let backend = async_nats::connect(nats.url()).await.unwrap();
    raw(&backend, &prefix, "here", SOL, "2026-01-01T10:00:00Z").await;
    raw(&backend, &prefix, "gone", (SOL.0 + 0.3, SOL.1), "2026-01-01T10:00:00Z").await;
    // The indexer is asynchronous to the publish: wait until an area sees it.
    let mut probe = WsClient::connect(&first.url("/ws/location")).await;
    let mut n = 0;
    wait_until("the position to be indexed", async || {
        n += 1;
        let id = format!("probe{n}");
        let seen = subscribe(&mut probe, around(&id, SOL)).await;
        probe.send_json(json!({"type": "unsubscribe_area", "data": {"areaId": id}})).await;
        // Indexed between the snapshot and the unsubscribe: the area was
        // told live, before its unsubscribe was acknowledged.
        let mut entered_live = false;
        loop {
            let m = probe.recv().await;
            if m["type"] == "unsubscribed" {
                break;
            }
            assert_eq!(
                (m["type"].as_str(), m["data"]["areaId"].as_str(), m["data"]["vendorId"].as_str()),
                (Some("vendor_entered"), Some(id.as_str()), Some("here")),
                "{m}"
            );
            entered_live = true;
        }
        seen == ["here"] || (seen.is_empty() && entered_live)
    })
    .await;

    // An instance started after the updates: its snapshot comes from KV.
    let second = gateway(&nats, &prefix).await;
    let mut c = WsClient::connect(&second.url("/ws/location")).await;
    assert_eq!(subscribe(&mut c, around("a", SOL)).await, ["here"]);
    // A move to a far cell: published on the old cell too, so this
    // instance (which does not watch the new cell) sees it leave.
    raw(&backend, &prefix, "here", (SOL.0 + 0.2, SOL.1 + 0.2), "2026-01-01T10:00:01Z").await;
    assert_eq!(
        c.recv().await,
        json!({"type": "vendor_left", "data": {"areaId": "a", "vendorId": "here", "reason": "moved"}})
    );
    // A stale fix does not bring it back.
    raw(&backend, &prefix, "here", SOL, "2026-01-01T09:59:59Z").await;
    // HTTP ingest on the first instance reaches the second's area.
    first.publish_location("gone", SOL.0, SOL.1).await;
    let m = c.recv().await;
    assert_eq!((m["type"].as_str(), m["data"]["vendorId"].as_str()), (Some("vendor_entered"), Some("gone")), "{m}");

    // The KV holds each vendor once, and each in one cell.
    let js = async_nats::jetstream::new(backend.clone());
    let bucket = format!("{}_GEO", prefix.to_uppercase().replace(['-', '.'], "_"));
    let kv = js.get_key_value(bucket).await.unwrap();
    let mut keys: Vec<String> = futures_util::StreamExt::collect::<Vec<_>>(kv.keys().await.unwrap())
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    keys.sort();
    let cells: BTreeMap<String, usize> =
        keys.iter().filter(|k| k.starts_with("c.")).fold(BTreeMap::new(), |mut m, k| {
            *m.entry(k.rsplit('.').next().unwrap_or_default().to_owned()).or_default() += 1;
            m
        });
    assert_eq!(cells, BTreeMap::from([("gone".into(), 1), ("here".into(), 1)]), "{keys:?}");
    first.shutdown().await;
    second.shutdown().await;
}

/// One vendor jumping in and out of an area as fast as a backend can
/// publish, its updates spread over three indexing instances: the client
/// sees a consistent story (never entered twice without a leave between,
/// never a leave of what it was not told), and it ends where the last
/// update put the vendor. Nothing is lost for good, nothing doubled.
#[tokio::test]
async fn rapid_updates_indexed_by_different_instances_converge() {
    let nats = OwnNats::start().await;
    let prefix = unique_prefix();
    let gws = [gateway(&nats, &prefix).await, gateway(&nats, &prefix).await, gateway(&nats, &prefix).await];
    let backend = async_nats::connect(nats.url()).await.unwrap();
    let mut c = WsClient::connect(&gws[0].url("/ws/location")).await;
    assert!(subscribe(&mut c, around("a", SOL)).await.is_empty());
    let far = (SOL.0 + 0.2, SOL.1 + 0.2);
    let n = 101; // odd: the last one is inside
    for i in 0..n {
        let p = if i % 2 == 0 { SOL } else { far };
        let ts = format!("2026-01-01T10:{:02}:{:02}.{:03}Z", i / 60, i % 60, i);
        let body = json!({"vendorId": "jumpy", "location": {"lat": p.0, "long": p.1}, "timestamp": ts});
        backend.publish(format!("{prefix}.location.jumpy"), body.to_string().into()).await.unwrap();
    }
    backend.flush().await.unwrap();
    // Follow the story until the final position is known, then check it.
    let parse = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("{t}: {e}"))
    };
    let final_ts = parse("2026-01-01T10:01:40.100Z");
    let mut inside = false;
    let mut last_ts = parse("2000-01-01T00:00:00Z");
    loop {
        let m = c.recv().await;
        match m["type"].as_str() {
            Some("vendor_entered") => {
                assert!(!inside, "entered twice without a leave: {m}");
                inside = true;
            }
            Some("location_updated") => assert!(inside, "a move of a vendor not inside: {m}"),
            Some("vendor_left") => {
                assert!(inside, "a leave of a vendor not inside: {m}");
                inside = false;
            }
            _ => panic!("unexpected {m}"),
        }
        if let Some(ts) = m["data"]["timestamp"].as_str().map(parse) {
            assert!(ts > last_ts, "positions go forward in time: {ts} after {last_ts}");
            last_ts = ts;
        }
        if inside && last_ts == final_ts {
            break;
        }
    }
    // And a fresh area sees the same final truth.
    let mut d = WsClient::connect(&gws[1].url("/ws/location")).await;
    assert_eq!(subscribe(&mut d, around("b", SOL)).await, ["jumpy"]);
    let mut e = WsClient::connect(&gws[2].url("/ws/location")).await;
    assert!(subscribe(&mut e, around("far", far)).await.is_empty(), "and not where it was before");
    for gw in gws {
        gw.shutdown().await;
    }
}
