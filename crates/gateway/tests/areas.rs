//! Area subscriptions ("vendors near me") on one embedded gateway, with a
//! real WebSocket client: snapshot, enter / move / leave, circles, moving
//! an area, the antimeridian, every limit and bad shape, stale updates,
//! expiry, and the audit rows. Across instances: tests/areas_nats.rs.

mod common;

use common::{TestGateway, WsClient, test_config};
use serde_json::{Value, json};

/// Madrid, Puerta del Sol.
const SOL: (f64, f64) = (40.4169, -3.7035);

fn bbox(id: &str, s: f64, w: f64, n: f64, e: f64) -> Value {
    json!({"type": "subscribe_area", "id": id,
        "data": {"areaId": id, "userId": "u1", "bbox": {"south": s, "west": w, "north": n, "east": e}}})
}

fn circle(id: &str, lat: f64, long: f64, r: f64) -> Value {
    json!({"type": "subscribe_area", "id": id,
        "data": {"areaId": id, "userId": "u1", "circle": {"center": {"lat": lat, "long": long}, "radiusM": r}}})
}

/// A box of about 2 × 2 km around Sol.
fn sol_box(id: &str) -> Value {
    bbox(id, SOL.0 - 0.009, SOL.1 - 0.012, SOL.0 + 0.009, SOL.1 + 0.012)
}

async fn publish_at(gw: &TestGateway, vendor: &str, lat: f64, long: f64, ts: &str) {
    let body = json!({"vendorId": vendor, "location": {"lat": lat, "long": long}, "timestamp": ts});
    common::publish(&gw.http("/api/v1/publish/location"), &body).await;
}

/// Subscribes an area and returns its snapshot's vendors (sorted ids).
async fn subscribe(c: &mut WsClient, msg: Value) -> Value {
    let id = msg["id"].clone();
    let area = msg["data"]["areaId"].clone();
    c.send_json(msg).await;
    assert_eq!(c.recv().await, json!({"type": "subscribed", "data": {"channel": "area", "areaId": area}, "id": id}));
    let snap = c.recv().await;
    assert_eq!(snap["type"], "area_snapshot", "{snap}");
    assert_eq!(snap["data"]["areaId"], area);
    snap["data"].clone()
}

fn ids(snapshot: &Value) -> Vec<String> {
    snapshot["vendors"]
        .as_array()
        .map_or(Vec::new(), |v| v.iter().map(|e| e["vendorId"].as_str().unwrap_or_default().to_owned()).collect())
}

#[tokio::test]
async fn snapshot_then_enter_move_and_leave() {
    let gw = TestGateway::start().await;
    publish_at(&gw, "inside", SOL.0, SOL.1, "2026-01-01T10:00:00Z").await;
    publish_at(&gw, "outside", SOL.0 + 0.05, SOL.1, "2026-01-01T10:00:00Z").await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    let snap = subscribe(&mut c, sol_box("map")).await;
    assert_eq!(ids(&snap), ["inside"]);
    assert_eq!(snap["truncated"], false);
    assert_eq!(snap["vendors"][0]["location"], json!({"lat": SOL.0, "long": SOL.1}));
    assert_eq!(snap["vendors"][0]["timestamp"], "2026-01-01T10:00:00Z");

    // Comes in.
    publish_at(&gw, "outside", SOL.0 + 0.001, SOL.1, "2026-01-01T10:00:01Z").await;
    let m = c.recv().await;
    assert_eq!(
        m,
        json!({"type": "vendor_entered", "data": {"areaId": "map", "vendorId": "outside",
            "location": {"lat": SOL.0 + 0.001, "long": SOL.1}, "timestamp": "2026-01-01T10:00:01Z"}})
    );
    // Moves inside.
    publish_at(&gw, "inside", SOL.0 + 0.002, SOL.1, "2026-01-01T10:00:02Z").await;
    assert_eq!(
        c.recv().await,
        json!({"type": "location_updated", "data": {"vendorId": "inside",
            "location": {"lat": SOL.0 + 0.002, "long": SOL.1}, "timestamp": "2026-01-01T10:00:02Z", "areaId": "map"}})
    );
    // Leaves.
    publish_at(&gw, "inside", SOL.0 + 0.5, SOL.1, "2026-01-01T10:00:03Z").await;
    assert_eq!(
        c.recv().await,
        json!({"type": "vendor_left", "data": {"areaId": "map", "vendorId": "inside", "reason": "moved"}})
    );
    // Far away and staying away: nothing; the next message is the pong.
    publish_at(&gw, "inside", SOL.0 + 0.6, SOL.1, "2026-01-01T10:00:04Z").await;
    c.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": "p"}));

    c.send_json(json!({"type": "unsubscribe_area", "id": "u", "data": {"areaId": "map"}})).await;
    assert_eq!(
        c.recv().await,
        json!({"type": "unsubscribed", "data": {"channel": "area", "areaId": "map"}, "id": "u"})
    );
    publish_at(&gw, "outside", SOL.0, SOL.1, "2026-01-01T10:00:05Z").await;
    c.send_json(json!({"type": "ping", "id": "p2"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": "p2"}), "nothing after unsubscribe_area");
    let (areas, cells, vendors) = gw.shared.areas.stats();
    assert_eq!((areas, cells, vendors), (0, 0, 0), "an unsubscribed area leaves nothing behind");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_circle_is_great_circle_distance() {
    let gw = TestGateway::start().await;
    // 800 m and 1,300 m north of the centre (1° of latitude ≈ 111.2 km).
    let north = |m: f64| SOL.0 + m / 111_195.0;
    publish_at(&gw, "near", north(800.0), SOL.1, "2026-01-01T10:00:00Z").await;
    publish_at(&gw, "far", north(1300.0), SOL.1, "2026-01-01T10:00:00Z").await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    let snap = subscribe(&mut c, circle("c", SOL.0, SOL.1, 1000.0)).await;
    assert_eq!(ids(&snap), ["near"]);
    // "far" moves to 950 m east: inside the circle (not inside by a box test
    // of 1 km around the centre either way; the exact distance decides).
    let east = SOL.1 + 950.0 / (111_195.0 * SOL.0.to_radians().cos());
    publish_at(&gw, "far", SOL.0, east, "2026-01-01T10:00:01Z").await;
    assert_eq!(c.recv().await["type"], "vendor_entered");
    // 1,050 m east: out.
    let out = SOL.1 + 1050.0 / (111_195.0 * SOL.0.to_radians().cos());
    publish_at(&gw, "far", SOL.0, out, "2026-01-01T10:00:02Z").await;
    assert_eq!(c.recv().await["data"]["reason"], "moved");
    gw.shutdown().await;
}

#[tokio::test]
async fn moving_an_area_sends_only_the_difference() {
    let gw = TestGateway::start().await;
    publish_at(&gw, "west", SOL.0, SOL.1 - 0.010, "2026-01-01T10:00:00Z").await;
    publish_at(&gw, "mid", SOL.0, SOL.1, "2026-01-01T10:00:00Z").await;
    publish_at(&gw, "east", SOL.0, SOL.1 + 0.010, "2026-01-01T10:00:00Z").await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    let snap = subscribe(&mut c, bbox("m", SOL.0 - 0.005, SOL.1 - 0.015, SOL.0 + 0.005, SOL.1 + 0.005)).await;
    assert_eq!(ids(&snap), ["mid", "west"]);
    // Pan east: west leaves, east enters, mid stays (nothing about it).
    c.send_json(bbox("m", SOL.0 - 0.005, SOL.1 - 0.005, SOL.0 + 0.005, SOL.1 + 0.015)).await;
    assert_eq!(c.recv().await, json!({"type": "subscribed", "data": {"channel": "area", "areaId": "m"}, "id": "m"}));
    assert_eq!(
        c.recv().await,
        json!({"type": "vendor_left", "data": {"areaId": "m", "vendorId": "west", "reason": "area_changed"}})
    );
    let entered = c.recv().await;
    assert_eq!(
        (entered["type"].as_str(), entered["data"]["vendorId"].as_str()),
        (Some("vendor_entered"), Some("east"))
    );
    c.send_json(json!({"type": "ping", "id": "p"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": "p"}), "no snapshot, nothing about mid");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_box_across_the_antimeridian() {
    let gw = TestGateway::start().await;
    // Fiji's side of the 180th meridian, and the other side.
    publish_at(&gw, "w", -17.0, 179.99, "2026-01-01T10:00:00Z").await;
    publish_at(&gw, "e", -17.0, -179.99, "2026-01-01T10:00:00Z").await;
    publish_at(&gw, "zero", -17.0, 0.0, "2026-01-01T10:00:00Z").await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    let snap = subscribe(&mut c, bbox("fiji", -17.05, 179.95, -16.95, -179.95)).await;
    assert_eq!(ids(&snap), ["e", "w"]);
    gw.shutdown().await;
}

#[tokio::test]
async fn stale_updates_do_not_move_a_vendor() {
    let gw = TestGateway::start().await;
    publish_at(&gw, "v", SOL.0, SOL.1, "2026-01-01T10:00:10Z").await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    assert_eq!(ids(&subscribe(&mut c, sol_box("a")).await), ["v"]);
    // An older fix far away arrives late: it must not make the vendor leave.
    publish_at(&gw, "v", SOL.0 + 1.0, SOL.1, "2026-01-01T10:00:05Z").await;
    publish_at(&gw, "v", SOL.0 + 0.001, SOL.1, "2026-01-01T10:00:11Z").await;
    let m = c.recv().await;
    assert_eq!(
        (m["type"].as_str(), m["data"]["timestamp"].as_str()),
        (Some("location_updated"), Some("2026-01-01T10:00:11Z"))
    );
    // A second client's snapshot shows the newest position too.
    let mut d = WsClient::connect(&gw.url("/ws/location")).await;
    let snap = subscribe(&mut d, sol_box("b")).await;
    assert_eq!(snap["vendors"][0]["location"]["lat"], SOL.0 + 0.001);
    gw.shutdown().await;
}

#[tokio::test]
async fn silent_vendors_expire() {
    let mut config = test_config();
    config.geo.vendor_ttl_secs = 1;
    let gw = TestGateway::start_with(config).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    assert!(ids(&subscribe(&mut c, sol_box("a")).await).is_empty());
    gw.publish_location("v", SOL.0, SOL.1).await;
    assert_eq!(c.recv().await["type"], "vendor_entered");
    // No update for GEO_VENDOR_TTL: it leaves with reason expired.
    assert_eq!(
        c.recv().await,
        json!({"type": "vendor_left", "data": {"areaId": "a", "vendorId": "v", "reason": "expired"}})
    );
    let mut d = WsClient::connect(&gw.url("/ws/location")).await;
    assert!(ids(&subscribe(&mut d, sol_box("b")).await).is_empty(), "not in later snapshots");
    gw.shutdown().await;
}

#[tokio::test]
async fn limits_and_bad_shapes_are_refused_with_stable_codes() {
    let mut config = test_config();
    config.geo.max_areas = 2;
    config.geo.snapshot_max = 3;
    let gw = TestGateway::start_with(config).await;
    for i in 0..5 {
        publish_at(&gw, &format!("v{i}"), SOL.0, SOL.1 + f64::from(i) * 0.0001, "2026-01-01T10:00:00Z").await;
    }
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    let snap = subscribe(&mut c, sol_box("a")).await;
    assert_eq!((ids(&snap).len(), &snap["truncated"]), (3, &json!(true)), "GEO_SNAPSHOT_MAX");
    subscribe(&mut c, sol_box("b")).await;
    // Moving an existing area is not a new one.
    c.send_json(sol_box("b")).await;
    assert_eq!(c.recv().await["type"], "subscribed");
    let error = |code: &str, id: &str| {
        let (code, id) = (code.to_owned(), id.to_owned());
        move |m: Value| {
            assert_eq!(m["type"], "error", "{m}");
            assert_eq!(m["data"]["code"], code.as_str(), "{m}");
            assert_eq!(m["data"]["requestType"], "subscribe_area", "{m}");
            assert_eq!(m["id"], id.as_str(), "{m}");
        }
    };
    c.send_json(sol_box("c")).await;
    error("too_many_subscriptions", "c")(c.recv().await);
    c.send_json(json!({"type": "unsubscribe_area", "data": {"areaId": "b"}})).await;
    assert_eq!(c.recv().await["type"], "unsubscribed");
    // 40 × 40 km: a 56 km diagonal.
    c.send_json(bbox("big", 40.2, -3.95, 40.56, -3.48)).await;
    error("area_too_large", "big")(c.recv().await);
    c.send_json(circle("big2", SOL.0, SOL.1, 26_000.0)).await;
    error("area_too_large", "big2")(c.recv().await);
    for (id, msg) in [
        ("s>n", bbox("s>n", 41.0, -3.8, 40.0, -3.6)),
        ("lat", bbox("lat", 89.0, 0.0, 91.0, 0.1)),
        ("long", circle("long", 40.0, 181.0, 100.0)),
        ("r0", circle("r0", 40.0, 0.0, 0.0)),
        ("rneg", circle("rneg", 40.0, 0.0, -5.0)),
    ] {
        c.send_json(msg).await;
        let m = c.recv().await;
        assert_eq!((m["data"]["code"].as_str(), m["id"].as_str()), (Some("invalid_field"), Some(id)), "{m}");
    }
    c.send_json(json!({"type": "subscribe_area", "id": "both", "data": {"areaId": "x", "userId": "u1",
        "bbox": {"south": 1, "west": 1, "north": 2, "east": 2}, "circle": {"center": {"lat": 1, "long": 1}, "radiusM": 5}}}))
        .await;
    assert_eq!(c.recv().await["data"]["code"], "invalid_field");
    c.send_json(json!({"type": "subscribe_area", "id": "none", "data": {"areaId": "x", "userId": "u1"}})).await;
    assert_eq!(c.recv().await["data"]["code"], "invalid_field");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_holds_areas_and_vendor_subscriptions_side_by_side() {
    let gw = TestGateway::start().await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v").await;
    subscribe(&mut c, sol_box("a")).await;
    gw.publish_location("v", SOL.0, SOL.1).await;
    let mut got = vec![c.recv().await["type"].as_str().unwrap_or_default().to_owned()];
    got.push(c.recv().await["type"].as_str().unwrap_or_default().to_owned());
    got.sort();
    assert_eq!(got, ["location_updated", "vendor_entered"], "one delivery per subscription");
    gw.shutdown().await;
}

#[tokio::test]
async fn area_subscriptions_are_audited_with_their_shape() {
    let mut config = test_config();
    config.auth.admin_token = Some("area-audit-admin-token-0123456789".into());
    let gw = TestGateway::start_with(config).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    subscribe(&mut c, circle("near", SOL.0, SOL.1, 500.0)).await;
    c.send_json(json!({"type": "unsubscribe_area", "data": {"areaId": "near"}})).await;
    assert_eq!(c.recv().await["type"], "unsubscribed");
    subscribe(&mut c, sol_box("kept")).await;
    drop(c);
    let url = gw.http("/api/v1/audit?limit=50");
    common::wait_until("the area's audit rows", async || {
        let req = reqwest::Client::new().get(&url).bearer_auth("area-audit-admin-token-0123456789");
        let Ok(r) = req.send().await else { return false };
        let v: Value = r.json().await.unwrap_or_default();
        let rows = v["rows"].as_array().cloned().unwrap_or_default();
        let area: Vec<_> = rows.iter().filter(|r| r["channel"] == "area").collect();
        // near: subscribe + unsubscribe; kept: subscribe + unsubscribe at disconnect.
        area.len() == 4
            && area.iter().any(|r| {
                r["action"] == "subscribe"
                    && r["vendorId"] == "near"
                    && r["reason"].as_str().is_some_and(|s| s.starts_with("circle"))
            })
            && area.iter().any(|r| r["action"] == "unsubscribe" && r["vendorId"] == "near" && r["reason"].is_null())
            && area
                .iter()
                .any(|r| r["action"] == "unsubscribe" && r["vendorId"] == "kept" && r["reason"] == "disconnect")
    })
    .await;
    gw.shutdown().await;
}

#[tokio::test]
async fn areas_can_be_turned_off() {
    let mut config = test_config();
    config.geo.enabled = false;
    let gw = TestGateway::start_with(config).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.send_json(sol_box("a")).await;
    let m = c.recv().await;
    assert_eq!((m["data"]["code"].as_str(), m["id"].as_str()), (Some("unavailable"), Some("a")), "{m}");
    assert!(m["data"]["message"].as_str().is_some_and(|t| t.contains("GEO_ENABLED")), "{m}");
    // Vendor subscriptions are unaffected.
    c.subscribe("location", "v").await;
    gw.publish_location("v", SOL.0, SOL.1).await;
    assert_eq!(c.recv().await["type"], "location_updated");
    gw.shutdown().await;
}
