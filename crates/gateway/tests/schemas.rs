//! The schemas themselves: each compiles, each example validates, and the
//! copies inside `server/any.json` match their own files; the gateway's own
//! area messages validate, and its decoder takes the client examples.

mod common;

use std::path::Path;

use serde_json::{Value, json};
use venta_gateway::protocol::{
    AreaId, AreaShape, AreaVendor, Codec, Command, Delivery, LeftReason, Location, ServerMessage, VendorId,
    decode_json, encode,
};

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_matches_its_schema() {
    let root = common::root().join("schemas");
    let mut examples = Vec::new();
    walk(&root.join("examples"), &mut examples);
    assert!(examples.len() >= 20, "expected an example per schema, found {}", examples.len());
    for ex in examples {
        let rel = ex.strip_prefix(root.join("examples")).unwrap().to_string_lossy().into_owned();
        let value: Value = serde_json::from_str(&std::fs::read_to_string(&ex).unwrap()).unwrap();
        common::assert_schema(&rel, &value);
    }
}

#[test]
fn any_json_holds_exact_copies_of_the_server_schemas() {
    let root = common::root().join("schemas");
    let any: Value = serde_json::from_str(&std::fs::read_to_string(root.join("server/any.json")).unwrap()).unwrap();
    let defs = any["$defs"].as_object().expect("$defs");
    let mut files = Vec::new();
    walk(&root.join("server"), &mut files);
    let mut seen = 0;
    for f in files {
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "any" {
            continue;
        }
        let own: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let copy = defs.values().find(|d| d["$id"] == own["$id"]).unwrap_or_else(|| panic!("{name} not in any.json"));
        assert_eq!(copy, &own, "any.json's copy of {name} drifted");
        seen += 1;
    }
    assert!(seen >= 7);
}

// ---------------------------------------------------------------------------
// Area subscriptions: the gateway's own encodings against the schemas, and
// the schemas' client examples against the gateway's decoder.

fn encoded(msg: &ServerMessage<'_>) -> Value {
    serde_json::from_slice(&encode(msg, Codec::Json)).unwrap()
}

/// Valid against its own file (precise errors) and against `server/any.json`
/// (what every test client checks each frame with).
fn assert_server_schema(value: &Value) {
    let ty = value["type"].as_str().unwrap_or_else(|| panic!("no type in {value}"));
    common::assert_schema(&format!("server/{ty}.json"), value);
    common::assert_schema("server/any.json", value);
}

fn refused(rel: &str, value: &Value) -> bool {
    !common::schema(rel).is_valid(value)
}

#[test]
fn the_gateways_area_messages_match_the_schemas() {
    let area = AreaId::parse("map").unwrap();
    let v1 = VendorId::parse("v1").unwrap();
    let inside = |id: &str, lat: f64, long: f64, ts: &str| AreaVendor {
        vendor_id: VendorId::parse(id).unwrap(),
        location: Location { lat, long },
        timestamp: ts.into(),
    };
    let vendors = [
        inside("v1", 40.4168, -3.7038, "2026-11-30T06:20:00.123Z"),
        inside("v_2", -90.0, 180.0, "2026-11-30T06:20:00Z"),
        inside("v-3", 90.0, -180.0, "2026-11-30T06:20:00.123456789Z"),
    ];
    let mut seen = std::collections::BTreeSet::<String>::new();
    let mut msgs = vec![
        ServerMessage::AreaSubscribed { area: &area, id: Some("a1") },
        ServerMessage::AreaSubscribed { area: &area, id: None },
        ServerMessage::AreaUnsubscribed { area: &area, id: Some("a2") },
        ServerMessage::AreaUnsubscribed { area: &area, id: None },
        ServerMessage::AreaSnapshot { area: &area, vendors: &vendors, truncated: false },
        ServerMessage::AreaSnapshot { area: &area, vendors: &vendors[..1], truncated: true },
        ServerMessage::AreaSnapshot { area: &area, vendors: &[], truncated: false },
    ];
    for v in &vendors {
        msgs.push(ServerMessage::VendorEntered { area: &area, vendor: v });
        msgs.push(ServerMessage::AreaMoved { area: &area, vendor: v });
    }
    for reason in [LeftReason::Moved, LeftReason::Expired, LeftReason::AreaChanged] {
        msgs.push(ServerMessage::VendorLeft { area: &area, vendor: &v1, reason });
    }
    for msg in &msgs {
        let value = encoded(msg);
        assert_eq!(value["type"], msg.type_name(), "{value}");
        assert_server_schema(&value);
        seen.insert(msg.type_name().to_owned());
        if let Some(reason) = value["data"]["reason"].as_str() {
            seen.insert(reason.to_owned());
        }
    }
    let expected = ["subscribed", "unsubscribed", "area_snapshot", "vendor_entered", "location_updated", "vendor_left"];
    for ty in expected.into_iter().chain(["moved", "expired", "area_changed"]) {
        assert!(seen.contains(ty), "no {ty} checked");
    }
}

/// The schemas are precise about the area messages, not merely permissive:
/// each of these near misses is refused.
#[test]
fn the_area_schemas_refuse_near_misses() {
    let entered = json!({"type": "vendor_entered", "data": {"areaId": "map", "vendorId": "v1",
        "location": {"lat": 1.5, "long": -2.0}, "timestamp": "2026-01-01T00:00:00Z"}});
    assert!(!refused("server/vendor_entered.json", &entered), "the base case is valid");
    let with = |path: &[&str], v: Value| {
        let mut m = entered.clone();
        let mut at = &mut m;
        for p in &path[..path.len() - 1] {
            at = &mut at[*p];
        }
        at[path[path.len() - 1]] = v;
        m
    };
    for bad in [
        with(&["data", "areaId"], json!("a.b")),
        with(&["data", "areaId"], json!("")),
        with(&["data", "timestamp"], json!("2026-01-01T01:00:00+01:00")),
        with(&["data", "location", "lat"], json!(90.5)),
        with(&["data", "extra"], json!(1)),
        with(&["id"], json!("1")),
    ] {
        assert!(refused("server/vendor_entered.json", &bad), "accepted {bad}");
        assert!(refused("server/any.json", &bad), "any.json accepted {bad}");
    }
    let left = json!({"type": "vendor_left", "data": {"areaId": "map", "vendorId": "v1", "reason": "gone"}});
    assert!(refused("server/vendor_left.json", &left));
    let snapshot = json!({"type": "area_snapshot", "data": {"areaId": "map", "vendors": []}});
    assert!(refused("server/area_snapshot.json", &snapshot), "truncated is required");
    // An area move is never a snapshot, and its timestamp is UTC.
    let moved = json!({"type": "location_updated", "data": {"vendorId": "v1", "location": {"lat": 1.5, "long": -2.0},
        "timestamp": "2026-01-01T00:00:00Z", "areaId": "map"}});
    assert!(!refused("server/location_updated.json", &moved));
    let mut snap_move = moved.clone();
    snap_move["data"]["snapshot"] = json!(true);
    assert!(refused("server/location_updated.json", &snap_move));
    let mut offset_move = moved.clone();
    offset_move["data"]["timestamp"] = json!("2026-01-01T01:00:00+01:00");
    assert!(refused("server/location_updated.json", &offset_move));
    // ... while a per-vendor update keeps any offset.
    offset_move["data"].as_object_mut().unwrap().remove("areaId");
    assert!(!refused("server/location_updated.json", &offset_move));
    // The two ack shapes do not mix.
    for (channel, key) in [("area", "vendorId"), ("location", "areaId"), ("vendor", "areaId")] {
        for ty in ["subscribed", "unsubscribed"] {
            let ack = json!({"type": ty, "data": {"channel": channel, key: "x1"}});
            assert!(refused(&format!("server/{ty}.json"), &ack), "accepted {ack}");
        }
    }
    let both = json!({"type": "subscribed", "data": {"channel": "area", "areaId": "m", "vendorId": "v"}});
    assert!(refused("server/subscribed.json", &both));
    let code = json!({"type": "error", "data": {"code": "area_too_large", "message": "zoom in"}});
    assert!(!refused("server/error.json", &code));
}

/// What the client schemas accept, the decoder accepts as the same command;
/// the shapes the schema refuses (none, both) the decoder refuses too.
#[test]
fn the_decoder_accepts_the_client_area_examples() {
    let root = common::root().join("schemas/examples/client");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut decoded = 0;
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let value: Value = serde_json::from_str(&text).unwrap();
        let req = decode_json(text.as_bytes()).unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
        assert_eq!(req.command.type_name(), value["type"], "{}", f.display());
        assert_eq!(req.id.as_deref(), value["id"].as_str(), "{}", f.display());
        decoded += 1;
    }
    assert!(decoded >= 9, "expected every client example, decoded {decoded}");

    let example = |name: &str| std::fs::read_to_string(root.join(name)).unwrap();
    let Command::SubscribeArea { area, user, shape, delivery } =
        decode_json(example("subscribe_area.json").as_bytes()).unwrap().command
    else {
        panic!("subscribe_area example did not decode as SubscribeArea")
    };
    assert_eq!((area.as_str(), user.as_str()), ("map", "user-7"));
    assert_eq!(shape, AreaShape::BBox { south: 40.4, west: -3.72, north: 40.43, east: -3.68 });
    assert_eq!(delivery, Delivery::Stream);
    let Command::UnsubscribeArea { area } = decode_json(example("unsubscribe_area.json").as_bytes()).unwrap().command
    else {
        panic!("unsubscribe_area example did not decode as UnsubscribeArea")
    };
    assert_eq!(area.as_str(), "map");

    // A circle, with datagram delivery, across the antimeridian's neighbour.
    let circle = json!({"type": "subscribe_area", "data": {"areaId": "near", "userId": "u1",
        "circle": {"center": {"lat": -16.5, "long": 179.99}, "radiusM": 800}, "delivery": "datagram"}});
    common::assert_schema("client/subscribe_area.json", &circle);
    let Command::SubscribeArea { shape, delivery, .. } = decode_json(circle.to_string().as_bytes()).unwrap().command
    else {
        panic!("circle did not decode")
    };
    assert_eq!(shape, AreaShape::Circle { lat: -16.5, long: 179.99, radius_m: 800.0 });
    assert_eq!(delivery, Delivery::Datagram);
    // A box across the antimeridian (west > east) is a valid message.
    let across = json!({"type": "subscribe_area", "data": {"areaId": "fiji", "userId": "u1",
        "bbox": {"south": -17.0, "west": 179.9, "north": -16.9, "east": -179.9}}});
    common::assert_schema("client/subscribe_area.json", &across);
    assert!(decode_json(across.to_string().as_bytes()).is_ok());

    let b = json!({"south": 1, "west": 1, "north": 2, "east": 2});
    let c = json!({"center": {"lat": 1, "long": 2}, "radiusM": 5});
    for data in [
        json!({"areaId": "a", "userId": "u"}),
        json!({"areaId": "a", "userId": "u", "bbox": b, "circle": c}),
        json!({"areaId": "a.b", "userId": "u", "bbox": b}),
        json!({"areaId": "a", "bbox": b}),
        json!({"areaId": "a", "userId": "u", "bbox": {"west": 1, "north": 2, "east": 2}}),
        json!({"areaId": "a", "userId": "u", "circle": {"center": {"lat": 1}, "radiusM": 5}}),
        json!({"areaId": "a", "userId": "u", "bbox": b, "delivery": "carrier-pigeon"}),
    ] {
        let msg = json!({"type": "subscribe_area", "data": data});
        assert!(refused("client/subscribe_area.json", &msg), "schema accepted {msg}");
        assert!(decode_json(msg.to_string().as_bytes()).is_err(), "decoder accepted {msg}");
    }
    // What only the schema can see (ranges, radius); the gateway judges these
    // after decoding, with the same verdict (invalid_field).
    for data in [
        json!({"areaId": "a", "userId": "u", "bbox": {"south": -91, "west": 1, "north": 2, "east": 2}}),
        json!({"areaId": "a", "userId": "u", "circle": {"center": {"lat": 1, "long": 181}, "radiusM": 5}}),
        json!({"areaId": "a", "userId": "u", "circle": {"center": {"lat": 1, "long": 2}, "radiusM": 0}}),
    ] {
        let msg = json!({"type": "subscribe_area", "data": data});
        assert!(refused("client/subscribe_area.json", &msg), "schema accepted {msg}");
    }
    let unsub = json!({"type": "unsubscribe_area", "data": {}});
    assert!(refused("client/unsubscribe_area.json", &unsub));
    assert!(decode_json(unsub.to_string().as_bytes()).is_err());
}
