//! Property-based fuzzing (proptest, bounded so CI runs it every time) of
//! everything a client or publisher can send: the JSON decoder, the
//! WebTransport frame reader and MessagePack decoder, publish payloads and
//! the JWT path. Properties: never panic, and every refusal
//! carries a documented code. `PROPTEST_CASES` raises the count for a longer
//! run (e.g. `PROPTEST_CASES=1000000 cargo test --release --test fuzz`).

use proptest::prelude::*;
use serde_json::{Value, json};
use venta_gateway::auth::Authenticator;
use venta_gateway::protocol::frame::{FrameReader, write_frame};
use venta_gateway::protocol::{AreaShape, Channel, Command, ErrorCode, Update, decode_json, decode_msgpack};

fn cases(default: u32) -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    ProptestConfig { cases: n, failure_persistence: None, ..ProptestConfig::default() }
}

/// JSON values biased towards the protocol's shapes.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<i64>().prop_map(|i| json!(i)),
        "[A-Za-z0-9_.*> -]{0,70}".prop_map(Value::String),
        prop_oneof![
            Just("subscribe_location"),
            Just("subscribe_vendor"),
            Just("unsubscribe_location"),
            Just("unsubscribe_vendor"),
            Just("ping"),
            Just("pong"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("type".to_owned()),
                        Just("data".to_owned()),
                        Just("id".to_owned()),
                        Just("vendorId".to_owned()),
                        Just("userId".to_owned()),
                        Just("location".to_owned()),
                        Just("lat".to_owned()),
                        Just("long".to_owned()),
                        Just("vendor".to_owned()),
                        Just("name".to_owned()),
                        Just("timestamp".to_owned()),
                        Just("delivery".to_owned()),
                        "[a-z]{1,8}",
                    ],
                    inner,
                ),
                0..6,
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn safe(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

const CODES: [ErrorCode; 3] = [ErrorCode::InvalidJson, ErrorCode::InvalidField, ErrorCode::UnknownType];

proptest! {
    #![proptest_config(cases(20_000))]

    #[test]
    fn decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(rej) = decode_json(&bytes) {
            prop_assert!(CODES.contains(&rej.code));
        }
    }

    #[test]
    fn decoder_judges_structured_json(v in json_value()) {
        let text = v.to_string();
        match decode_json(text.as_bytes()) {
            // Whatever was accepted names only identifiers that are safe as
            // NATS subject tokens.
            Ok(req) => match req.command {
                Command::Subscribe { vendor, user, .. } => prop_assert!(safe(vendor.as_str()) && safe(user.as_str())),
                Command::Unsubscribe { vendor, user, .. } => {
                    prop_assert!(safe(vendor.as_str()) && user.as_ref().is_none_or(|u| safe(u.as_str())));
                }
                Command::Refresh { token } => prop_assert!(!token.is_empty()),
                Command::SubscribeArea { area, user, shape, .. } => {
                    prop_assert!(safe(area.as_str()) && safe(user.as_str()));
                    // Every accepted number is finite; the geometry judges the rest.
                    let finite = match shape {
                        AreaShape::BBox { south, west, north, east } => [south, west, north, east].iter().all(|v| v.is_finite()),
                        AreaShape::Circle { lat, long, radius_m } => [lat, long, radius_m].iter().all(|v| v.is_finite()),
                    };
                    prop_assert!(finite);
                }
                Command::UnsubscribeArea { area } => prop_assert!(safe(area.as_str())),
                Command::Ping | Command::Pong => {}
            },
            Err(rej) => prop_assert!(CODES.contains(&rej.code), "{rej:?}"),
        }
    }

    #[test]
    fn publish_payloads_never_panic(v in json_value(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for channel in [Channel::Location, Channel::Vendor] {
            if let Ok(u) = Update::from_publish_value(channel, v.clone(), None) {
                // Accepted updates re-serialise to a payload that is accepted again.
                prop_assert!(Update::from_publish_json(channel, &u.to_publish_json(), Some(u.vendor().as_str())).is_ok());
            }
            let _ = Update::from_publish_json(channel, &bytes, Some("v1"));
        }
    }

    #[test]
    fn frame_reader_and_msgpack_never_panic(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..6),
        max in 1usize..5000,
    ) {
        let mut reader = FrameReader::new(max);
        for chunk in &chunks {
            reader.push(chunk);
            // Drain as the transport does; an error ends the stream for good.
            while let Ok(Some(payload)) = reader.next_frame() {
                prop_assert!(payload.len() <= max, "a frame over the limit was accepted");
                if let Err(rej) = decode_msgpack(&payload) {
                    prop_assert!(
                        [ErrorCode::InvalidFrame, ErrorCode::InvalidField, ErrorCode::UnknownType].contains(&rej.code),
                        "{rej:?}"
                    );
                }
            }
        }
        let _ = reader.finish();
    }

    #[test]
    fn framed_msgpack_of_json_round_trips(v in json_value()) {
        // A well-formed frame of any value: the reader returns exactly it.
        let payload = rmp_serde::to_vec_named(&v).unwrap();
        let mut buf = Vec::new();
        write_frame(&payload, &mut buf).unwrap();
        let mut reader = FrameReader::new(payload.len().max(1));
        for piece in buf.chunks(7) {
            reader.push(piece);
        }
        let got = reader.next_frame().unwrap();
        prop_assert_eq!(got.as_deref(), Some(&payload[..]));
        let _ = decode_msgpack(&payload);
    }

    #[test]
    fn jwt_path_never_panics(token in "[A-Za-z0-9_.=+/-]{0,300}", parts in prop::collection::vec("[A-Za-z0-9_-]{0,80}", 0..5)) {
        let auth = Authenticator::from_config(Some("fuzz-secret-0123456789"), None, None, None, false).unwrap();
        prop_assert!(auth.verify(Some(&token)).is_err());
        prop_assert!(auth.verify(Some(&parts.join("."))).is_err());
    }
}

/// Regression cases found while fuzzing, kept as plain tests.
#[test]
fn regressions() {
    for input in ["", "\u{0}", "{\"type\":null}", "{\"type\":\"subscribe_location\",\"data\":{\"vendorId\":\"\"}}"] {
        assert!(decode_json(input.as_bytes()).is_err(), "{input:?}");
    }
}
