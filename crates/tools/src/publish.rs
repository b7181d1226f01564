//! `venta publish …`: publish an update by hand, over gRPC (default),
//! HTTP or straight to NATS, and print what happened.

use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use venta_protocol::{Channel, Update};

use crate::defaults;
use crate::pb::update_ingest_client::UpdateIngestClient;
use crate::pb::{Location, PublishLocationRequest, PublishVendorRequest};

/// How to reach the gateway.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Via {
    /// gRPC `UpdateIngest` on `--grpc-url`.
    Grpc,
    /// `POST /api/v1/publish/*` on `--http-url`.
    Http,
    /// Straight onto the NATS subject `<--nats-subject-prefix>.<channel>.<vendorId>` on `--nats-url`.
    Nats,
}

/// Where the gateway's ingest is, named as the gateway names it: the same
/// flags and environment variables (GRPC_PORT, WEBSOCKET_GATEWAY_PORT,
/// NATS_URL, NATS_SUBJECT_PREFIX, INGEST_TOKEN) for `publish` and `bench`,
/// so a shell set up for the gateway publishes where the gateway listens.
#[derive(Debug, Clone, Args)]
pub struct Endpoints {
    /// gRPC endpoint [default: http://127.0.0.1:<--grpc-port>].
    #[arg(long, global = true)]
    pub grpc_url: Option<String>,
    /// The gateway's gRPC port, for the default --grpc-url.
    #[arg(long, env = "GRPC_PORT", default_value_t = defaults::GRPC_PORT, global = true)]
    pub grpc_port: u16,
    /// HTTP base URL [default: http://127.0.0.1:<--http-port>].
    #[arg(long, global = true)]
    pub http_url: Option<String>,
    /// The gateway's HTTP port, for the default --http-url.
    #[arg(long, env = "WEBSOCKET_GATEWAY_PORT", default_value_t = defaults::HTTP_PORT, global = true)]
    pub http_port: u16,
    /// NATS server(s) of the gateway, comma-separated, for `--via nats`.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true,
        alias = "to-nats",
        alias = "nats"
    )]
    pub nats_url: String,
    /// The gateway's subject prefix, for `--via nats`.
    #[arg(long, env = "NATS_SUBJECT_PREFIX", default_value = defaults::NATS_SUBJECT_PREFIX, value_parser = subject_prefix, global = true, alias = "prefix")]
    pub nats_subject_prefix: String,
    /// The gateway's INGEST_TOKEN, sent as the bearer of HTTP and gRPC publishes.
    #[arg(long, env = "INGEST_TOKEN", hide_env_values = true, global = true)]
    pub ingest_token: Option<String>,
}

impl Endpoints {
    /// `--grpc-url`, or the local gateway's gRPC port.
    pub fn grpc_url(&self) -> String {
        self.grpc_url.clone().unwrap_or_else(|| format!("http://127.0.0.1:{}", self.grpc_port))
    }

    /// `--http-url` without a trailing slash, or the local gateway's HTTP port.
    pub fn http_url(&self) -> String {
        match &self.http_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://127.0.0.1:{}", self.http_port),
        }
    }

    /// Connects to `--nats-url` (every listed server).
    pub async fn nats(&self) -> anyhow::Result<async_nats::Client> {
        let servers: Vec<&str> = self.nats_url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        anyhow::ensure!(!servers.is_empty(), "--nats-url (NATS_URL) is empty");
        let connect = async_nats::ConnectOptions::new().connect(servers);
        tokio::time::timeout(NATS_CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| anyhow::anyhow!("connecting to NATS at {}: timed out", self.nats_url))?
            .with_context(|| format!("connecting to NATS at {}", self.nats_url))
    }
}

const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a NATS publish waits to learn whether anything subscribes.
const INTEREST_WAIT: Duration = Duration::from_millis(500);

/// As the gateway checks NATS_SUBJECT_PREFIX: dot-separated tokens, no wildcards.
fn subject_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.split('.')
            .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    if ok { Ok(s.to_owned()) } else { Err("must be dot-separated tokens of [A-Za-z0-9_-]".into()) }
}

/// Options of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(subcommand)]
    what: What,
    /// Transport.
    #[arg(long, value_enum, default_value = "grpc", global = true)]
    via: Via,
    #[command(flatten)]
    to: Endpoints,
    /// Old name of --ingest-token (kept so scripts do not break).
    #[arg(long, hide = true, global = true)]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum What {
    /// A vendor position.
    Location {
        /// The vendor.
        vendor_id: String,
        /// Latitude in [-90, 90].
        #[arg(long, allow_negative_numbers = true)]
        lat: f64,
        /// Longitude in [-180, 180].
        #[arg(long, allow_negative_numbers = true)]
        long: f64,
    },
    /// Vendor data: a JSON object with at least `name`.
    Vendor {
        /// The vendor.
        vendor_id: String,
        /// e.g. '{"name":"Tacos","description":"al pastor"}'
        #[arg(long)]
        json: String,
    },
}

/// Runs the subcommand.
pub async fn run(args: PublishArgs) -> anyhow::Result<()> {
    let body = match &args.what {
        What::Location { vendor_id, lat, long } => {
            json!({"vendorId": vendor_id, "location": {"lat": lat, "long": long}})
        }
        What::Vendor { vendor_id, json } => {
            let vendor: Value = serde_json::from_str(json).context("--json is not valid JSON")?;
            json!({"vendorId": vendor_id, "vendor": vendor})
        }
    };
    let channel = match args.what {
        What::Location { .. } => Channel::Location,
        What::Vendor { .. } => Channel::Vendor,
    };
    // Validate locally first: the same rules as every entry point.
    let update = Update::from_publish_value(channel, body.clone(), None).context("invalid update")?;
    let token = args.token.as_deref().or(args.to.ingest_token.as_deref());
    match args.via {
        Via::Grpc => {
            let url = args.to.grpc_url();
            let mut client =
                UpdateIngestClient::connect(url.clone()).await.with_context(|| format!("connecting to {url}"))?;
            let reply = match update {
                Update::Location(u) => {
                    let msg = PublishLocationRequest {
                        vendor_id: u.vendor_id.to_string(),
                        location: Some(Location { lat: u.location.lat, long: u.location.long }),
                        timestamp: None,
                    };
                    client.publish_location(authorized(msg, token)?).await
                }
                Update::Vendor(u) => {
                    let msg = PublishVendorRequest {
                        vendor_id: u.vendor_id.to_string(),
                        vendor: Some(to_struct(u.vendor)),
                        timestamp: None,
                    };
                    client.publish_vendor(authorized(msg, token)?).await
                }
            };
            let reply = reply.map_err(|s| anyhow::anyhow!("gRPC {:?}: {}", s.code(), s.message()))?.into_inner();
            println!("published over gRPC to {url} (timestamp {})", reply.timestamp);
        }
        Via::Http => {
            let url = format!("{}/api/v1/publish/{}", args.to.http_url(), channel.as_str());
            let mut req = reqwest::Client::new().post(&url).json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.with_context(|| format!("POST {url}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("HTTP {status}: {text}");
            }
            println!("published over HTTP to {url} ({status}): {text}");
        }
        Via::Nats => {
            let client = args.to.nats().await?;
            let subject = format!("{}.{}.{}", args.to.nats_subject_prefix, channel.as_str(), update.vendor());
            let said = publish_nats(&client, &subject, update.to_publish_json().into()).await?;
            match said {
                Interest::Subscribed => println!("published to NATS subject {subject} (a gateway is subscribed)"),
                Interest::Stored => {
                    println!("published to NATS subject {subject} (stored by JetStream as the vendor's last value)")
                }
                Interest::None => {
                    println!("published to NATS subject {subject}");
                    eprintln!(
                        "warning: nothing on {} subscribes to {subject}: no gateway delivers it. Either no client \
                         follows {} right now, or the gateway uses another NATS server or NATS_SUBJECT_PREFIX \
                         (this used {:?})",
                        args.to.nats_url,
                        update.vendor(),
                        args.to.nats_subject_prefix
                    );
                }
            }
        }
    }
    Ok(())
}

/// Who took a NATS publish.
enum Interest {
    /// A subscriber (a gateway with a client following the vendor).
    Subscribed,
    /// A JetStream stream (the gateway's last-value store) acknowledged it.
    Stored,
    /// Nothing subscribes to the subject: the update went nowhere.
    None,
}

/// Publishes as a request, so NATS says when no one subscribes ("no
/// responders"); a gateway never answers, a JetStream stream acknowledges.
async fn publish_nats(client: &async_nats::Client, subject: &str, payload: bytes::Bytes) -> anyhow::Result<Interest> {
    use async_nats::RequestErrorKind;
    let request = async_nats::Request::new().payload(payload).timeout(Some(INTEREST_WAIT));
    let outcome = client.send_request(subject.to_owned(), request).await;
    let interest = match outcome {
        Ok(_) => Interest::Stored,
        Err(e) if e.kind() == RequestErrorKind::NoResponders => Interest::None,
        Err(e) if e.kind() == RequestErrorKind::TimedOut => Interest::Subscribed,
        Err(e) => return Err(anyhow::anyhow!("publishing to NATS subject {subject}: {e}")),
    };
    client.flush().await.with_context(|| format!("flushing the publish to {subject}"))?;
    Ok(interest)
}

fn authorized<T>(msg: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().context("token is not a valid header")?);
    }
    Ok(req)
}

fn to_struct(map: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

fn to_value(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue { values: a.into_iter().map(to_value).collect() }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
