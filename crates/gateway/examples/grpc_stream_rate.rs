//! Measures sustained `StreamLocations` ingest: streams N location updates
//! over one gRPC call and prints updates/s (progress on stderr each second).
//!
//! `cargo run --release --example grpc_stream_rate -- http://127.0.0.1:5007 200000 1000`
//! (URL, number of updates, number of vendors).

use std::time::{Duration, Instant};

use venta_gateway::ingest::grpc::pb::update_ingest_client::UpdateIngestClient;
use venta_gateway::ingest::grpc::pb::{Location, PublishLocationRequest};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "http://127.0.0.1:5007".into());
    let n: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200_000);
    let vendors: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let mut client = UpdateIngestClient::connect(url.clone()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        let mut last = Instant::now();
        for i in 0..n {
            let req = PublishLocationRequest {
                vendor_id: format!("v{}", i % vendors),
                location: Some(Location { lat: (i % 90) as f64, long: (i % 180) as f64 }),
                timestamp: None,
            };
            if tx.send(req).await.is_err() {
                break;
            }
            if last.elapsed() >= Duration::from_secs(1) {
                eprintln!("sent {i}/{n} ({:.0}/s)", i as f64 / started.elapsed().as_secs_f64());
                last = Instant::now();
            }
        }
    });
    let summary = client.stream_locations(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    producer.await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"updates\":{n},\"accepted\":{},\"rejected\":{},\"seconds\":{secs:.3},\"per_second\":{:.0}}}",
        summary.accepted,
        summary.rejected,
        summary.accepted as f64 / secs
    );
    Ok(())
}
