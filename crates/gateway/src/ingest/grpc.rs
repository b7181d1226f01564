//! gRPC ingest (`venta.gateway.v1.UpdateIngest`, docs/protocol.md) for backend
//! services, plus standard health and reflection so `grpcurl -plaintext
//! localhost:5007 list` works.
//!
//! Requests are turned into the same JSON shape as HTTP and NATS payloads
//! and validated by the same code, so every entry point applies one set of
//! rules.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::{Request, Response, Status, Streaming};

use crate::bus::BusError;
use crate::protocol::{Channel, Update};
use crate::state::Shared;

/// Generated code of `proto/venta/gateway/v1/ingest.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("venta.gateway.v1");

    /// Encoded descriptors, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("venta_gateway_v1");
}

use pb::update_ingest_server::{UpdateIngest, UpdateIngestServer};

/// Largest accepted request message (as for HTTP publish bodies).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Rejections listed one by one in a stream summary.
const MAX_LISTED_REJECTIONS: usize = 100;
/// Bytes the listed rejections of a summary may take: well under
/// [`MAX_MESSAGE`], so the summary always encodes (the counts stay exact
/// however many rejections there were). Failing to encode it would fail
/// the call after its updates were published, and a retry would repeat them.
const MAX_LISTED_BYTES: usize = MAX_MESSAGE / 4;
/// Longest vendor id or reason echoed in one listed rejection.
const MAX_ECHOED_BYTES: usize = 256;
/// Earliest and latest instant of `google.protobuf.Timestamp`
/// (0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z): RFC 3339 years.
const MIN_TIMESTAMP_SECS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECS: i64 = 253_402_300_799;

/// The `UpdateIngest` service.
pub struct IngestService {
    shared: Arc<Shared>,
}

impl IngestService {
    /// A service publishing onto the gateway's bus.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let given = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).and_then(crate::auth::bearer);
        if super::authorized(&self.shared.config.auth, given) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong bearer token (INGEST_TOKEN)"))
        }
    }

    async fn publish(&self, update: Update) -> Result<Response<pb::PublishReply>, Status> {
        let channel = update.channel();
        let timestamp = match &update {
            Update::Location(u) => u.timestamp.clone(),
            Update::Vendor(u) => u.timestamp.clone(),
        };
        self.shared.bus.publish(update).await.map_err(unavailable)?;
        self.shared.metrics.published(channel, "grpc", 1);
        Ok(Response::new(pb::PublishReply { published: true, timestamp }))
    }

    fn invalid(&self, e: &crate::protocol::ValidationError) -> Status {
        self.shared.metrics.updates_invalid.with_label_values(&["grpc"]).inc();
        Status::invalid_argument(e.to_string())
    }
}

/// `s` cut to at most [`MAX_ECHOED_BYTES`] (on a character boundary), with
/// an ellipsis when cut.
fn truncated(mut s: String) -> String {
    if s.len() > MAX_ECHOED_BYTES {
        let mut end = MAX_ECHOED_BYTES - '…'.len_utf8();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn unavailable(e: BusError) -> Status {
    Status::unavailable(e.to_string())
}

/// The JSON `timestamp` of a gRPC one; `None` when the request has none, so
/// the field is left out (the gateway stamps it) rather than sent as null.
fn timestamp_json(ts: Option<prost_types::Timestamp>) -> Result<Option<Value>, crate::protocol::ValidationError> {
    let Some(ts) = ts else { return Ok(None) };
    let bad = |m: &str| crate::protocol::ValidationError { field: "timestamp".into(), message: m.into() };
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(bad("nanos must be in [0, 999999999]"));
    }
    if !(MIN_TIMESTAMP_SECS..=MAX_TIMESTAMP_SECS).contains(&ts.seconds) {
        return Err(bad("must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"));
    }
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| bad("out of range"))?;
    at.format(&Rfc3339).map(|t| Some(Value::String(t))).map_err(|_| bad("out of range"))
}

fn location_update(req: pb::PublishLocationRequest) -> Result<Update, crate::protocol::ValidationError> {
    let mut body = Map::new();
    body.insert("vendorId".into(), Value::String(req.vendor_id));
    if let Some(l) = req.location {
        body.insert("location".into(), json!({"lat": l.lat, "long": l.long}));
    }
    if let Some(ts) = timestamp_json(req.timestamp)? {
        body.insert("timestamp".into(), ts);
    }
    Update::from_publish_value(Channel::Location, Value::Object(body), None)
}

fn vendor_update(req: pb::PublishVendorRequest) -> Result<Update, crate::protocol::ValidationError> {
    let mut body = Map::new();
    body.insert("vendorId".into(), Value::String(req.vendor_id));
    if let Some(v) = req.vendor {
        body.insert("vendor".into(), struct_json(v));
    }
    if let Some(ts) = timestamp_json(req.timestamp)? {
        body.insert("timestamp".into(), ts);
    }
    Update::from_publish_value(Channel::Vendor, Value::Object(body), None)
}

/// `google.protobuf.Struct` → JSON object. Numbers are doubles in protobuf;
/// non-finite ones become `null` (JSON has no NaN).
fn struct_json(s: prost_types::Struct) -> Value {
    Value::Object(s.fields.into_iter().map(|(k, v)| (k, value_json(v))).collect())
}

fn value_json(v: prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::StructValue(s)) => struct_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.into_iter().map(value_json).collect()),
    }
}

#[tonic::async_trait]
impl UpdateIngest for IngestService {
    async fn publish_location(
        &self,
        request: Request<pb::PublishLocationRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        self.authorize(&request)?;
        let update = location_update(request.into_inner()).map_err(|e| self.invalid(&e))?;
        self.publish(update).await
    }

    async fn publish_vendor(
        &self,
        request: Request<pb::PublishVendorRequest>,
    ) -> Result<Response<pb::PublishReply>, Status> {
        self.authorize(&request)?;
        let update = vendor_update(request.into_inner()).map_err(|e| self.invalid(&e))?;
        self.publish(update).await
    }

    async fn stream_locations(
        &self,
        request: Request<Streaming<pb::PublishLocationRequest>>,
    ) -> Result<Response<pb::StreamSummary>, Status> {
        self.authorize(&request)?;
        let mut stream = request.into_inner();
        let mut summary = pb::StreamSummary::default();
        let mut by_field: HashMap<String, u64> = HashMap::new();
        let mut index = 0u64;
        let mut listed_bytes = 0usize;
        loop {
            let req = match stream.message().await {
                Ok(Some(req)) => req,
                Ok(None) => break,
                // Say how far the stream got: what was accepted is published.
                Err(e) if summary.accepted > 0 => {
                    return Err(Status::new(
                        e.code(),
                        format!("{} (after {} accepted)", e.message(), summary.accepted),
                    ));
                }
                Err(e) => return Err(e),
            };
            let vendor_id = req.vendor_id.clone();
            match location_update(req) {
                Ok(update) => {
                    self.shared
                        .bus
                        .publish(update)
                        .await
                        .map_err(|e| Status::unavailable(format!("{e} (after {} accepted)", summary.accepted)))?;
                    summary.accepted += 1;
                }
                Err(e) => {
                    self.shared.metrics.updates_invalid.with_label_values(&["grpc"]).inc();
                    summary.rejected += 1;
                    *by_field.entry(e.field.clone()).or_default() += 1;
                    if summary.rejections.len() < MAX_LISTED_REJECTIONS {
                        let rejection =
                            pb::Rejection { index, vendor_id: truncated(vendor_id), reason: truncated(e.to_string()) };
                        let size = prost::Message::encoded_len(&rejection) + 8;
                        if listed_bytes + size <= MAX_LISTED_BYTES {
                            listed_bytes += size;
                            summary.rejections.push(rejection);
                        }
                    }
                }
            }
            index += 1;
        }
        if summary.accepted > 0 {
            self.shared.metrics.published(Channel::Location, "grpc", summary.accepted);
        }
        summary.rejected_by_field = by_field;
        Ok(Response::new(summary))
    }
}

/// The gRPC router: ingest, health (following the bus) and reflection.
pub async fn routes(shared: Arc<Shared>) -> Result<tonic::service::Routes, tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let ingest = UpdateIngestServer::new(IngestService::new(Arc::clone(&shared)))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let up = shared.bus.up_changes();
    shared.tasks.spawn(follow_bus_health(up, shared.shutdown.clone(), reporter));
    Ok(tonic::service::Routes::new(ingest).add_service(health).add_service(reflection))
}

/// Keeps `grpc.health.v1` SERVING while the bus is up, NOT_SERVING while
/// it is down; at shutdown it says NOT_SERVING and ends. It waits on the
/// bus's health changes (no polling) and holds nothing of the gateway, so
/// it cannot keep a stopped gateway alive.
async fn follow_bus_health(
    mut up: tokio::sync::watch::Receiver<bool>,
    shutdown: tokio_util::sync::CancellationToken,
    reporter: tonic_health::server::HealthReporter,
) {
    let set = async |status| {
        reporter.set_service_status("", status).await;
        reporter.set_service_status("venta.gateway.v1.UpdateIngest", status).await;
    };
    // A bus that cannot change (in process) is up until shutdown.
    let mut follow = true;
    loop {
        let serving = *up.borrow_and_update();
        set(if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing }).await;
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = up.changed(), if follow => follow = changed.is_ok(),
        }
    }
    set(tonic_health::ServingStatus::NotServing).await;
}
