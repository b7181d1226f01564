//! `venta-gateway publish …`: publish an update by hand, over gRPC (default),
//! HTTP or straight to NATS, and print what happened.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};
use venta_gateway::ingest::grpc::pb::update_ingest_client::UpdateIngestClient;
use venta_gateway::ingest::grpc::pb::{Location, PublishLocationRequest, PublishVendorRequest};
use venta_gateway::protocol::{Channel, Update};

/// How to reach the gateway.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Via {
    /// gRPC `UpdateIngest` on `--grpc-url`.
    Grpc,
    /// `POST /api/v1/publish/*` on `--http-url`.
    Http,
    /// Straight onto the NATS subject on `--nats-url`.
    Nats,
}

/// Options of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(subcommand)]
    what: What,
    /// Transport.
    #[arg(long, value_enum, default_value = "grpc", global = true)]
    via: Via,
    /// gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:5007", global = true)]
    grpc_url: String,
    /// HTTP base URL.
    #[arg(long, default_value = "http://127.0.0.1:5006", global = true)]
    http_url: String,
    /// NATS server for `--via nats`.
    #[arg(long = "to-nats", default_value = "nats://127.0.0.1:4222", global = true)]
    to_nats: String,
    /// Subject prefix for `--via nats`.
    #[arg(long, default_value = "venta", global = true)]
    prefix: String,
    /// Bearer token (`INGEST_TOKEN`) for gRPC and HTTP.
    #[arg(long, env = "INGEST_TOKEN", hide_env_values = true, global = true)]
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
    match args.via {
        Via::Grpc => {
            let mut client = UpdateIngestClient::connect(args.grpc_url.clone())
                .await
                .with_context(|| format!("connecting to {}", args.grpc_url))?;
            let reply = match update {
                Update::Location(u) => {
                    let msg = PublishLocationRequest {
                        vendor_id: u.vendor_id.to_string(),
                        location: Some(Location { lat: u.location.lat, long: u.location.long }),
                        timestamp: None,
                    };
                    client.publish_location(authorized(msg, args.token.as_deref())?).await
                }
                Update::Vendor(u) => {
                    let msg = PublishVendorRequest {
                        vendor_id: u.vendor_id.to_string(),
                        vendor: Some(to_struct(u.vendor)),
                        timestamp: None,
                    };
                    client.publish_vendor(authorized(msg, args.token.as_deref())?).await
                }
            };
            let reply = reply.map_err(|s| anyhow::anyhow!("gRPC {:?}: {}", s.code(), s.message()))?.into_inner();
            println!("published over gRPC (timestamp {})", reply.timestamp);
        }
        Via::Http => {
            let url = format!("{}/api/v1/publish/{}", args.http_url.trim_end_matches('/'), channel.as_str());
            let mut req = reqwest::Client::new().post(&url).json(&body);
            if let Some(t) = &args.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.with_context(|| format!("POST {url}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("HTTP {status}: {text}");
            }
            println!("published over HTTP ({status}): {text}");
        }
        Via::Nats => {
            let client = async_nats::connect(args.to_nats.as_str())
                .await
                .with_context(|| format!("connecting to {}", args.to_nats))?;
            let subject = format!("{}.{}.{}", args.prefix, channel.as_str(), update.vendor());
            client.publish(subject.clone(), update.to_publish_json().into()).await?;
            client.flush().await?;
            println!("published to NATS subject {subject}");
        }
    }
    Ok(())
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
