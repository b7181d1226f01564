//! Publishing location updates at a paced rate, over NATS, HTTP or gRPC.
//!
//! NATS publishes are buffered by the client and leave in order. HTTP and
//! gRPC are request/response: vendors are spread over `--publish-concurrency`
//! lanes, each sending one request at a time, so updates of one vendor stay
//! in order (the receivers flag anything older than what they saw) while
//! many vendors are published concurrently. The timestamp is taken when a
//! request actually leaves, so a lane's backlog is not charged to the
//! gateway; a publisher that cannot keep up shows as `publish_rate` below
//! the step's rate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::{Ascii, MetadataValue};

use crate::pb::update_ingest_client::UpdateIngestClient;
use crate::pb::{Location, PublishLocationRequest};

use super::args::{BenchArgs, Via};
use super::marker;
use super::stats::Stats;

/// Queued publishes per lane before the pacer waits.
const LANE_QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Outcome counters of the current step.
#[derive(Default)]
pub struct PubStats {
    /// Updates the gateway (or NATS) accepted.
    pub published: AtomicU64,
    /// Updates refused or failed.
    pub errors: AtomicU64,
    /// Deliveries owed: live subscribers of each accepted update's vendor.
    pub expected: AtomicU64,
    by_error: Mutex<BTreeMap<String, u64>>,
}

impl PubStats {
    fn reset(&self) {
        for c in [&self.published, &self.errors, &self.expected] {
            c.store(0, Relaxed);
        }
    }

    fn failed(&self, e: String) {
        self.errors.fetch_add(1, Relaxed);
        let key: String = e.chars().take(100).collect();
        *self.by_error.lock().entry(key).or_default() += 1;
    }

    /// Publish errors of the whole run, by message.
    pub fn errors_by_message(&self) -> BTreeMap<String, u64> {
        self.by_error.lock().clone()
    }
}

/// Shared by the pacer and the lanes.
struct Ctx {
    vendors: Vec<String>,
    stats: Arc<Stats>,
    out: Arc<PubStats>,
}

impl Ctx {
    fn accepted(&self, v: usize) {
        self.out.published.fetch_add(1, Relaxed);
        let subs = self.stats.subs_per_vendor.get(v).map_or(0, |c| c.load(Relaxed));
        self.out.expected.fetch_add(subs, Relaxed);
    }
}

enum LaneMsg {
    Publish { v: usize, seq: u64, phase: u32, at: Option<(f64, f64)> },
    Barrier(oneshot::Sender<()>),
}

enum Sink {
    Http { client: reqwest::Client, url: String, token: Option<String> },
    Grpc { client: UpdateIngestClient<tonic::transport::Channel>, token: Option<MetadataValue<Ascii>> },
}

impl Sink {
    /// Sends the marker of `seq`/`phase` as the location, or `at` (lat, long).
    async fn send(&mut self, vendor: &str, seq: u64, phase: u32, at: Option<(f64, f64)>) -> Result<(), String> {
        let (lat, long) = at.unwrap_or_else(|| marker::encode(seq, phase));
        let ns = marker::now_ns();
        match self {
            Self::Http { client, url, token } => {
                let body = serde_json::json!({
                    "vendorId": vendor, "location": {"lat": lat, "long": long}, "timestamp": marker::rfc3339(ns),
                });
                let mut req = client.post(url.as_str()).json(&body);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await.map_err(|e| format!("POST: {e}"))?;
                let status = resp.status();
                // Read the body so the connection is reused.
                let _ = resp.bytes().await;
                if status.is_success() { Ok(()) } else { Err(format!("HTTP {}", status.as_u16())) }
            }
            Self::Grpc { client, token } => {
                let msg = PublishLocationRequest {
                    vendor_id: vendor.to_owned(),
                    location: Some(Location { lat, long }),
                    timestamp: Some(prost_types::Timestamp {
                        seconds: i64::try_from(ns / 1_000_000_000).unwrap_or(i64::MAX),
                        nanos: i32::try_from(ns % 1_000_000_000).unwrap_or(0),
                    }),
                };
                let mut req = tonic::Request::new(msg);
                if let Some(t) = token {
                    req.metadata_mut().insert("authorization", t.clone());
                }
                client
                    .publish_location(req)
                    .await
                    .map(|_| ())
                    .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))
            }
        }
    }
}

async fn lane(mut rx: mpsc::Receiver<LaneMsg>, mut sink: Sink, ctx: Arc<Ctx>) {
    while let Some(msg) = rx.recv().await {
        match msg {
            LaneMsg::Publish { v, seq, phase, at } => {
                let vendor = ctx.vendors.get(v).map_or("", String::as_str);
                match sink.send(vendor, seq, phase, at).await {
                    Ok(()) => ctx.accepted(v),
                    Err(e) => ctx.out.failed(e),
                }
            }
            LaneMsg::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

enum Inner {
    Nats { client: async_nats::Client, subjects: Vec<String> },
    Lanes(Vec<mpsc::Sender<LaneMsg>>),
}

/// Publishes updates of the bench's vendors.
pub struct Publisher {
    inner: Inner,
    ctx: Arc<Ctx>,
}

impl Publisher {
    /// Connects to NATS, or checks the HTTP/gRPC endpoint and starts lanes.
    pub async fn connect(args: &BenchArgs, vendors: Vec<String>, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let ctx = Arc::new(Ctx { vendors, stats, out: Arc::new(PubStats::default()) });
        let inner = match args.via() {
            Via::Nats => {
                let client = args.to.nats().await?;
                let prefix = &args.to.nats_subject_prefix;
                let subjects = ctx.vendors.iter().map(|v| format!("{prefix}.location.{v}")).collect();
                Inner::Nats { client, subjects }
            }
            Via::Http => {
                let base = args.to.http_url();
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .pool_max_idle_per_host(usize::from(args.publish_concurrency))
                    .build()
                    .context("building the HTTP client")?;
                let live = format!("{base}/health/live");
                let resp = tokio::time::timeout(CONNECT_TIMEOUT, client.get(&live).send())
                    .await
                    .map_err(|_| anyhow::anyhow!("GET {live}: timed out"))?
                    .with_context(|| format!("GET {live} (is --http-url right?)"))?;
                anyhow::ensure!(resp.status().is_success(), "GET {live} answered {}", resp.status());
                let url = format!("{base}/api/v1/publish/location");
                let sink =
                    || Sink::Http { client: client.clone(), url: url.clone(), token: args.to.ingest_token.clone() };
                Inner::Lanes(start_lanes(args.publish_concurrency, sink, &ctx))
            }
            Via::Grpc => {
                let grpc_url = args.to.grpc_url();
                let endpoint = tonic::transport::Endpoint::from_shared(grpc_url.clone())
                    .with_context(|| format!("--grpc-url {grpc_url:?}"))?
                    .connect_timeout(CONNECT_TIMEOUT);
                let channel = endpoint.connect().await.with_context(|| format!("connecting to {grpc_url}"))?;
                let token = match &args.to.ingest_token {
                    Some(t) => Some(format!("Bearer {t}").parse().context("--ingest-token is not a valid header")?),
                    None => None,
                };
                let sink = || Sink::Grpc { client: UpdateIngestClient::new(channel.clone()), token: token.clone() };
                Inner::Lanes(start_lanes(args.publish_concurrency, sink, &ctx))
            }
        };
        Ok(Self { inner, ctx })
    }

    /// This step's counters.
    pub fn stats(&self) -> &Arc<PubStats> {
        &self.ctx.out
    }

    /// Zeroes the step counters (after [`Publisher::flush`]).
    pub fn begin_step(&self) {
        self.ctx.out.reset();
    }

    /// Publishes update `seq` of vendor `v`, stamped now.
    pub async fn publish(&self, v: usize, seq: u64, phase: u32) {
        self.send(v, seq, phase, None).await;
    }

    /// Publishes vendor `v` at a real position (`lat`, `long`), stamped
    /// when it leaves (the area scenario: positions, not markers).
    pub async fn publish_at(&self, v: usize, lat: f64, long: f64) {
        self.send(v, 0, 0, Some((lat, long))).await;
    }

    async fn send(&self, v: usize, seq: u64, phase: u32, at: Option<(f64, f64)>) {
        match &self.inner {
            Inner::Nats { client, subjects } => {
                let (Some(subject), Some(vendor)) = (subjects.get(v), self.ctx.vendors.get(v)) else { return };
                let (lat, long) = at.unwrap_or_else(|| marker::encode(seq, phase));
                let ts = marker::rfc3339(marker::now_ns());
                let payload =
                    format!(r#"{{"vendorId":"{vendor}","location":{{"lat":{lat},"long":{long}}},"timestamp":"{ts}"}}"#);
                match client.publish(subject.clone(), payload.into()).await {
                    Ok(()) => self.ctx.accepted(v),
                    Err(e) => self.ctx.out.failed(format!("NATS publish: {e}")),
                }
            }
            Inner::Lanes(lanes) => {
                if lanes[v % lanes.len()].send(LaneMsg::Publish { v, seq, phase, at }).await.is_err() {
                    self.ctx.out.failed("publisher lane stopped".into());
                }
            }
        }
    }

    /// Waits until everything published so far has left (NATS) or been
    /// answered (HTTP, gRPC).
    pub async fn flush(&self) {
        match &self.inner {
            Inner::Nats { client, .. } => {
                if let Err(e) = client.flush().await {
                    self.ctx.out.failed(format!("NATS flush: {e}"));
                }
            }
            Inner::Lanes(lanes) => {
                for lane in lanes {
                    let (tx, rx) = oneshot::channel();
                    if lane.send(LaneMsg::Barrier(tx)).await.is_ok() {
                        let _ = rx.await;
                    }
                }
            }
        }
    }

    /// Publishes `rate × duration` updates evenly over `duration`,
    /// round-robin over the vendors; `seq` holds each vendor's next number.
    /// Returns how many were sent.
    pub async fn paced(&self, rate: f64, duration: Duration, seq: &mut [u64], phase: u32) -> u64 {
        let vendors = seq.len() as u64;
        let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        let t0 = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            let due = ((t0.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
            while sent < due {
                let v = (sent % vendors) as usize;
                self.publish(v, seq[v], phase).await;
                seq[v] += 1;
                sent += 1;
            }
            if sent < total {
                tokio::time::sleep_until((t0 + Duration::from_secs_f64(sent as f64 / rate)).into()).await;
            }
        }
        sent
    }
}

fn start_lanes(n: u16, sink: impl Fn() -> Sink, ctx: &Arc<Ctx>) -> Vec<mpsc::Sender<LaneMsg>> {
    (0..n)
        .map(|_| {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            tokio::spawn(lane(rx, sink(), Arc::clone(ctx)));
            tx
        })
        .collect()
}
