//! gRPC ingest (docs/protocol.md) with a real tonic client.

mod common;

use std::time::Duration;

use common::nats::{MACHINE_NATS, OwnNats, Proxy, require_machine_nats, unique_prefix};
use common::{TestGateway, WsClient, test_config};
use prost_types::value::Kind;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;
use venta_gateway::ingest::grpc::pb::update_ingest_client::UpdateIngestClient;
use venta_gateway::ingest::grpc::pb::{Location, PublishLocationRequest, PublishVendorRequest};

async fn client(gw: &TestGateway) -> UpdateIngestClient<Channel> {
    UpdateIngestClient::connect(format!("http://{}", gw.grpc_addr)).await.expect("grpc connect")
}

async fn channel(gw: &TestGateway) -> Channel {
    Channel::from_shared(format!("http://{}", gw.grpc_addr)).unwrap().connect().await.expect("grpc channel")
}

fn loc(vendor: &str, lat: f64, long: f64) -> PublishLocationRequest {
    PublishLocationRequest { vendor_id: vendor.into(), location: Some(Location { lat, long }), timestamp: None }
}

fn sval(kind: Kind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

fn vendor_struct(name: &str) -> prost_types::Struct {
    let mut s = prost_types::Struct::default();
    s.fields.insert("name".into(), sval(Kind::StringValue(name.into())));
    s.fields.insert("open".into(), sval(Kind::BoolValue(true)));
    let mut inner = prost_types::Struct::default();
    inner.fields.insert("stars".into(), sval(Kind::NumberValue(4.5)));
    s.fields.insert("rating".into(), sval(Kind::StructValue(inner)));
    s
}

#[tokio::test]
async fn unary_publishes_reach_websocket_clients() {
    let gw = TestGateway::start().await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "g1").await;
    ws.subscribe("vendor", "g1").await;
    let mut grpc = client(&gw).await;
    let mut req = loc("g1", 48.5, 2.25);
    req.timestamp = Some(prost_types::Timestamp { seconds: 1_780_000_000, nanos: 500_000_000 });
    let reply = grpc.publish_location(req).await.expect("publish").into_inner();
    assert!(reply.published);
    let u = ws.recv().await;
    assert_eq!(u["data"]["location"], json!({"lat": 48.5, "long": 2.25}));
    assert_eq!(u["data"]["timestamp"], reply.timestamp);
    assert!(reply.timestamp.starts_with("2026-05-28T"), "{}", reply.timestamp);

    let req = PublishVendorRequest { vendor_id: "g1".into(), vendor: Some(vendor_struct("Crêpes")), timestamp: None };
    assert!(grpc.publish_vendor(req).await.expect("publish vendor").into_inner().published);
    let u = ws.recv().await;
    assert_eq!(u["data"]["vendor"], json!({"name": "Crêpes", "open": true, "rating": {"stars": 4.5}}));
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_are_invalid_argument_naming_the_field() {
    let gw = TestGateway::start().await;
    let mut grpc = client(&gw).await;
    for (req, field) in [
        (loc("g1", 91.0, 0.0), "location.lat"),
        (loc("g1", 0.0, -180.5), "location.long"),
        (loc("g1", f64::NAN, 0.0), "location.lat"),
        (loc("g.1", 0.0, 0.0), "vendorId"),
        (loc("", 0.0, 0.0), "vendorId"),
        (PublishLocationRequest { vendor_id: "g1".into(), location: None, timestamp: None }, "location"),
    ] {
        let err = grpc.publish_location(req).await.expect_err("must be refused");
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(field), "{field}: {}", err.message());
    }
    let nameless = PublishVendorRequest { vendor_id: "g1".into(), vendor: Some(Default::default()), timestamp: None };
    let err = grpc.publish_vendor(nameless).await.expect_err("nameless vendor");
    assert_eq!((err.code(), err.message().starts_with("vendor.name")), (Code::InvalidArgument, true));
    let missing = PublishVendorRequest { vendor_id: "g1".into(), vendor: None, timestamp: None };
    assert_eq!(grpc.publish_vendor(missing).await.expect_err("no vendor").code(), Code::InvalidArgument);
    // Over the 64 KiB message limit.
    let mut big = vendor_struct("big");
    big.fields.insert("pad".into(), sval(Kind::StringValue("x".repeat(70_000))));
    let err =
        grpc.publish_vendor(PublishVendorRequest { vendor_id: "g1".into(), vendor: Some(big), timestamp: None }).await;
    assert_eq!(err.expect_err("too big").code(), Code::OutOfRange);
    gw.shutdown().await;
}

#[tokio::test]
async fn ingest_token_is_unauthenticated_when_missing_or_wrong() {
    let mut config = test_config();
    config.auth.ingest_token = Some("tok".into());
    let gw = TestGateway::start_with(config).await;
    let mut grpc = client(&gw).await;
    let err = grpc.publish_location(loc("g1", 0.0, 0.0)).await.expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(loc("g1", 0.0, 0.0));
    req.metadata_mut().insert("authorization", "Bearer nope".parse().unwrap());
    assert_eq!(grpc.publish_location(req).await.expect_err("wrong token").code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(loc("g1", 0.0, 0.0));
    req.metadata_mut().insert("authorization", "Bearer tok".parse().unwrap());
    assert!(grpc.publish_location(req).await.expect("right token").into_inner().published);
    gw.shutdown().await;
}

#[tokio::test]
async fn stream_of_ten_thousand_counts_exactly_and_delivers_only_valid_ones() {
    let mut config = test_config();
    config.limits.max_queue_messages = 100_000;
    let gw = TestGateway::start_with(config).await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "s0").await;
    let mut grpc = client(&gw).await;
    let n = 10_000u64;
    let invalid = |i: u64| i.is_multiple_of(7) || i.is_multiple_of(13);
    let items = (0..n).map(move |i| {
        let vendor = format!("s{}", i % 10);
        if i.is_multiple_of(13) {
            loc("bad.vendor", 0.0, 0.0)
        } else if i.is_multiple_of(7) {
            loc(&vendor, 91.0, 0.0)
        } else {
            loc(&vendor, (i as f64) / 1000.0, 0.0)
        }
    });
    let summary = grpc.stream_locations(tokio_stream::iter(items)).await.expect("stream").into_inner();
    let expected_rejected = (0..n).filter(|i| invalid(*i)).count() as u64;
    assert_eq!(summary.accepted + summary.rejected, n);
    assert_eq!(summary.rejected, expected_rejected);
    assert_eq!(
        summary.rejected_by_field.get("vendorId"),
        Some(&(0..n).filter(|i| i.is_multiple_of(13)).count().try_into().unwrap())
    );
    assert_eq!(
        summary.rejected_by_field.get("location.lat"),
        Some(&(0..n).filter(|i| i.is_multiple_of(7) && !i.is_multiple_of(13)).count().try_into().unwrap())
    );
    assert_eq!(summary.rejections.len(), 100);
    assert_eq!(summary.rejections[0].index, 0);
    // The client on s0 gets exactly the valid s0 updates, in order.
    let expected: Vec<f64> =
        (0..n).filter(|i| i.is_multiple_of(10) && !invalid(*i)).map(|i| (i as f64) / 1000.0).collect();
    for want in &expected {
        let u = ws.recv().await;
        assert_eq!(u["data"]["location"]["lat"].as_f64(), Some(*want));
    }
    ws.send_json(json!({"type": "ping", "id": "end"})).await;
    assert_eq!(ws.recv().await["id"], "end", "nothing invalid or extra was delivered");
    gw.shutdown().await;
}

#[tokio::test]
async fn reflection_lists_the_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let gw = TestGateway::start().await;
    let mut refl = ServerReflectionClient::new(channel(&gw).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let msg = resp.message().await.unwrap().expect("a reply");
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else { panic!("{msg:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"venta.gateway.v1.UpdateIngest".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
    gw.shutdown().await;
}

#[tokio::test]
async fn with_nats_a_grpc_publish_reaches_another_instance() {
    require_machine_nats();
    let prefix = unique_prefix();
    let config = || {
        let mut c = test_config();
        c.nats.url = Some(MACHINE_NATS.into());
        c.nats.subject_prefix = prefix.clone();
        c
    };
    let a = TestGateway::start_with(config()).await;
    let b = TestGateway::start_with(config()).await;
    // Both connected to NATS (readiness follows the bus) before the test
    // leans on them: under heavy load the first connect can be slow.
    for gw in [&a, &b] {
        common::wait_until("gateway ready", async || gw.is_ready().await).await;
    }
    let mut ws = WsClient::connect(&b.url("/ws/location")).await;
    ws.subscribe("location", "n1").await;
    let mut grpc = client(&a).await;
    grpc.publish_location(loc("n1", 33.5, 44.5)).await.expect("publish via a");
    assert_eq!(ws.recv().await["data"]["location"], json!({"lat": 33.5, "long": 44.5}));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn health_and_unavailable_follow_a_nats_outage() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let own = OwnNats::start().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", own.port).parse().unwrap()).await;
    let mut config = test_config();
    config.nats.url = Some(format!("nats://{}", proxy.addr));
    config.nats.subject_prefix = unique_prefix();
    let gw = TestGateway::start_with(config).await;
    let mut health = HealthClient::new(channel(&gw).await);
    let status = async |h: &mut HealthClient<Channel>| {
        let req = HealthCheckRequest { service: "venta.gateway.v1.UpdateIngest".into() };
        h.check(req).await.map(|r| r.into_inner().status).unwrap_or(-1)
    };
    let wait_for = async |h: &mut HealthClient<Channel>, want: ServingStatus| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while status(h).await != want as i32 {
            assert!(tokio::time::Instant::now() < deadline, "health never became {want:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for(&mut health, ServingStatus::Serving).await;
    proxy.cut();
    wait_for(&mut health, ServingStatus::NotServing).await;
    let mut grpc = client(&gw).await;
    let err = grpc.publish_location(loc("o1", 0.0, 0.0)).await.expect_err("bus down");
    assert_eq!(err.code(), Code::Unavailable);
    proxy.restore();
    wait_for(&mut health, ServingStatus::Serving).await;
    assert!(grpc.publish_location(loc("o1", 0.0, 0.0)).await.expect("bus back").into_inner().published);
    gw.shutdown().await;
}

#[tokio::test]
async fn lower_case_bearer_scheme_is_accepted() {
    let mut config = test_config();
    config.auth.ingest_token = Some("tok".into());
    let gw = TestGateway::start_with(config).await;
    let mut grpc = client(&gw).await;
    for auth in ["bearer tok", "BEARER tok"] {
        let mut req = tonic::Request::new(loc("g1", 0.0, 0.0));
        req.metadata_mut().insert("authorization", auth.parse().unwrap());
        assert!(grpc.publish_location(req).await.expect(auth).into_inner().published, "{auth}");
    }
    let mut req = tonic::Request::new(loc("g1", 0.0, 0.0));
    req.metadata_mut().insert("authorization", "bearer nope".parse().unwrap());
    assert_eq!(grpc.publish_location(req).await.expect_err("wrong token").code(), Code::Unauthenticated);
    gw.shutdown().await;
}

#[tokio::test]
async fn timestamps_outside_the_protobuf_range_are_invalid_argument() {
    let gw = TestGateway::start().await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "t1").await;
    let mut grpc = client(&gw).await;
    let ts = |seconds: i64, nanos: i32| {
        let mut r = loc("t1", 1.0, 1.0);
        r.timestamp = Some(prost_types::Timestamp { seconds, nanos });
        r
    };
    for (seconds, nanos, what) in [
        (1_780_000_000, -1, "negative nanos"),
        (1_780_000_000, -999_999_999, "negative nanos"),
        (1_780_000_000, 1_000_000_000, "nanos of a whole second"),
        (-62_167_219_200, 0, "year 0"),
        (-62_135_596_801, 0, "a second before year 1"),
        (253_402_300_800, 0, "year 10000"),
    ] {
        let err = grpc.publish_location(ts(seconds, nanos)).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {}", err.message());
        assert!(err.message().starts_with("timestamp"), "{what}: {}", err.message());
    }
    // The edges of the range pass.
    let first = grpc.publish_location(ts(-62_135_596_800, 0)).await.expect("year 1").into_inner();
    assert!(first.timestamp.starts_with("0001-01-01T00:00:00"), "{}", first.timestamp);
    let last = grpc.publish_location(ts(253_402_300_799, 999_999_999)).await.expect("9999").into_inner();
    assert!(last.timestamp.starts_with("9999-12-31T23:59:59"), "{}", last.timestamp);
    for want in [&first.timestamp, &last.timestamp] {
        assert_eq!(&ws.recv().await["data"]["timestamp"], want);
    }
    ws.send_json(json!({"type": "ping", "id": "end"})).await;
    assert_eq!(ws.recv().await["id"], "end", "a refused timestamp was delivered");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_summary_of_many_long_rejections_still_encodes_and_counts_exactly() {
    let gw = TestGateway::start().await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "long0").await;
    let mut grpc = client(&gw).await;
    // 120 ids of 60 KB each (every message under the 64 KiB limit), each
    // between two good updates: listed in full they would be 6 MB.
    let long_id = "x".repeat(60_000) + ".";
    let mut items = Vec::new();
    for i in 0..120 {
        items.push(loc("long0", f64::from(i) / 1000.0, 0.0));
        items.push(loc(&long_id, 0.0, 0.0));
    }
    items.push(loc("long0", 0.5, 0.0));
    let summary = grpc.stream_locations(tokio_stream::iter(items)).await.expect("summary").into_inner();
    assert_eq!((summary.accepted, summary.rejected), (121, 120));
    assert_eq!(summary.rejected_by_field.get("vendorId"), Some(&120));
    // Only the first few are listed: bounded by bytes, below the count cap.
    assert!(!summary.rejections.is_empty() && summary.rejections.len() < 100, "{}", summary.rejections.len());
    assert_eq!(summary.rejections[0].index, 1);
    assert!(summary.rejections.iter().all(|r| r.vendor_id.len() <= 256 && r.reason.len() <= 256));
    assert!(prost::Message::encoded_len(&summary) < 32 * 1024, "{}", prost::Message::encoded_len(&summary));
    // Each good update was delivered once.
    for i in 0..120 {
        assert_eq!(ws.recv().await["data"]["location"]["lat"].as_f64(), Some(f64::from(i) / 1000.0));
    }
    assert_eq!(ws.recv().await["data"]["location"]["lat"].as_f64(), Some(0.5));
    ws.send_json(json!({"type": "ping", "id": "end"})).await;
    assert_eq!(ws.recv().await["id"], "end");
    gw.shutdown().await;
}

/// Sends raw bytes as a gRPC message (what a broken or hostile client may).
mod raw {
    use bytes::{Buf, BufMut, Bytes};
    use tonic::Status;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Default)]
    pub struct RawCodec;
    pub struct RawEncoder;
    pub struct RawDecoder;

    impl Codec for RawCodec {
        type Encode = Bytes;
        type Decode = Bytes;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Bytes;
        type Error = Status;
        fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put(item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = Bytes;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
            Ok(Some(src.copy_to_bytes(src.remaining())))
        }
    }
}

#[tokio::test]
async fn undecodable_messages_are_invalid_argument() {
    use tonic::codegen::http::uri::PathAndQuery;
    let gw = TestGateway::start().await;
    let mut grpc = tonic::client::Grpc::new(channel(&gw).await);
    // Field 1 (vendor_id) announces 5 bytes and carries 1; then a lone
    // varint continuation byte.
    for garbage in [&b"\x0a\x05a"[..], b"\xff"] {
        grpc.ready().await.expect("ready");
        let path = PathAndQuery::from_static("/venta.gateway.v1.UpdateIngest/PublishLocation");
        let req = tonic::Request::new(bytes::Bytes::copy_from_slice(garbage));
        let err = grpc.unary(req, path, raw::RawCodec).await.expect_err("garbage accepted");
        assert_eq!(err.code(), Code::InvalidArgument, "{garbage:?}: {}", err.message());
        grpc.ready().await.expect("ready");
        let path = PathAndQuery::from_static("/venta.gateway.v1.UpdateIngest/StreamLocations");
        let req = tonic::Request::new(tokio_stream::iter([bytes::Bytes::copy_from_slice(garbage)]));
        let err = grpc.client_streaming(req, path, raw::RawCodec).await.expect_err("garbage stream accepted");
        assert_eq!(err.code(), Code::InvalidArgument, "stream {garbage:?}: {}", err.message());
    }
    // The service still works.
    assert!(
        client(&gw).await.publish_location(loc("g1", 0.0, 0.0)).await.expect("after garbage").into_inner().published
    );
    gw.shutdown().await;
}
