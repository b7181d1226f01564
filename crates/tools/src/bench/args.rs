//! Command-line options of `venta bench` and the scenario presets.
//! A preset fills in the options the user did not give; flags always win.

use std::net::IpAddr;

use anyhow::bail;
use clap::{Args, ValueEnum};

/// Client transport; each is one [`super::transport::Connector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientTransport {
    /// WebSocket, JSON text frames (`ws://…/ws/location`).
    #[value(alias = "ws")]
    Websocket,
    /// WebTransport (HTTP/3 over QUIC), MessagePack frames (`https://…/wt/location`).
    #[value(alias = "wt")]
    Webtransport,
}

impl ClientTransport {
    /// The JSON result's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Websocket => "websocket",
            Self::Webtransport => "webtransport",
        }
    }
}

/// How a WebTransport client asks for location updates (docs/protocol.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WtDelivery {
    /// Framed on the session's bidirectional stream (reliable, in order).
    Stream,
    /// `"delivery": "datagram"`: one unreliable datagram per live update.
    Datagram,
}

/// How the bench publishes updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// `POST /api/v1/publish/location` on `--http-url` (works with any gateway).
    Http,
    /// gRPC `UpdateIngest/PublishLocation` on `--grpc-url`.
    Grpc,
    /// Straight onto `<--nats-subject-prefix>.location.<vendor>` on `--nats-url` (the gateway must use that NATS).
    Nats,
}

/// Ready-made scenarios (the team's reference benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Idle memory: 10,000 connections over 1,000 vendors, offered at 5,000/s
    /// (256 in flight), one readiness publish per vendor, no steps.
    S1,
    /// Fan-out: 2,000 subscribers of one vendor, publish rate stepped up
    /// (5 … 1,000 msg/s, 10 s each) until p99 > 250 ms or a loss.
    S2,
    /// Spread: 10,000 clients over 1,000 vendors, 2,000 msg/s for 20 s.
    S3,
    /// Areas ("vendors near me"): 10,000 vendors on a random walk over a
    /// 30 × 30 km city, 2,000 updates/s; 5,000 clients each watching a
    /// 2 × 2 km box (10 % panning), compared with 5,000 per-vendor clients
    /// in the same run, then a convergence check of every area.
    S4,
    /// Checker (Jepsen-style): 30 clients over 10 vendors, 200 numbered
    /// updates/s for 10 s; every delivery recorded, then lost, gap,
    /// duplicated and out-of-order updates and convergence per client.
    /// Exit 3 when the path's promise is broken.
    Verify,
}

/// `venta bench`: load-test a deployment.
#[derive(Debug, Clone, Args)]
#[command(
    about = "Load-test a gateway: N WebSocket or WebTransport clients, updates published at stepped rates, latency and losses",
    long_about = "Load-test a gateway. Opens --conns clients at a controlled rate over --vendors \
vendors (client i subscribes to location of <vendor-prefix><i % vendors> and waits for the `subscribed` ack), \
publishes location updates at each of --rates for --duration seconds (over HTTP, gRPC or NATS, --via) with the \
send time as `timestamp`, and reports per step: deliveries/s, latency p50/p90/p99/p99.9/max, expected vs \
received, losses, duplicates, and the server's RSS with --pid. A step fails on p99 > --stop-p99-ms, a loss, a \
duplicate, a dropped client or a refused publish; a failed step is retried --step-retries times, then the run \
stops. Progress goes to stderr every second; one JSON \
line goes to stdout at the end.\n\nClient transport (--transport): websocket (JSON text frames; plain ws:// only, \
no TLS) or webtransport (alias wt: MessagePack frames on one bidirectional stream, or datagrams with \
--wt-delivery datagram; --url https://HOST:WT_PORT/wt/location). WebTransport pins the certificate hash that \
the gateway serves at GET /wt/cert-hash on --http-url (its dev certificate), or --wt-cert-hash, or validates \
against the system's roots with --wt-system-roots (a CA-signed WT_CERT).\n\nThe gateway must admit the load: raise WS_MAX_CONNECTIONS \
(default 1000) for more connections, and WS_MAX_CONNECTIONS_PER_USER when every client uses one --jwt. The \
bench says before connecting when a run needs more than a default gateway admits, and stops connecting at the \
first 1013 refusal.\n\n\
Exit status: 0 when the run completed and printed its result (`ok` in the JSON says whether every connection \
and every step passed; s2 ends on purpose with a failed step), 1 when it could not run, 2 for invalid options, \
3 when --scenario verify found its path's promise broken (lost, duplicated or out-of-order updates on a lossless \
path, or a client not holding the last value published)."
)]
pub struct BenchArgs {
    /// Preset (s1, s2, s3, s4, verify); the flags below override its values.
    #[arg(long, value_enum)]
    pub scenario: Option<Scenario>,
    /// Client transport: websocket (ws) or webtransport (wt).
    #[arg(long, value_enum, default_value = "websocket")]
    pub transport: ClientTransport,
    /// Session endpoint of the gateway [default: ws://127.0.0.1:<--http-port>/ws/location;
    /// webtransport: https://127.0.0.1:<--http-port>/wt/location].
    #[arg(long)]
    pub url: Option<String>,
    /// Client JWT for every client, sent as `?token=` (when the gateway has auth on).
    #[arg(long, env = "BENCH_TOKEN", hide_env_values = true, alias = "token")]
    pub jwt: Option<String>,
    /// `userId` in subscribes. Default: the token's `sub`, else `u<i>` per client.
    #[arg(long)]
    pub user: Option<String>,
    /// Vendor ids are this prefix plus a number.
    #[arg(long, default_value = "v")]
    pub vendor_prefix: String,
    /// WebTransport: SHA-256 of the certificate to trust (64 hex digits,
    /// colons allowed; comma-separated during a rotation). Default: fetched
    /// from `<--http-url>/wt/cert-hash`.
    #[arg(long, value_delimiter = ',')]
    pub wt_cert_hash: Vec<String>,
    /// WebTransport: validate the gateway's certificate against the system's
    /// root certificates instead of pinning a hash (a CA-signed WT_CERT;
    /// hash pinning only accepts self-signed P-256 certificates of ≤ 14 days).
    #[arg(long, conflicts_with = "wt_cert_hash")]
    pub wt_system_roots: bool,
    /// WebTransport: live updates on the stream or as datagrams (a lost or
    /// reordered datagram shows as `lost` or `dup`).
    #[arg(long, value_enum, default_value = "stream")]
    pub wt_delivery: WtDelivery,

    /// How updates are published [default: http; s4: nats when --nats-url
    /// (or NATS_URL) is given, so the ingest is not in the gateway's CPU figure].
    #[arg(long, value_enum)]
    pub via: Option<Via>,
    /// Whether --nats-url or NATS_URL was given (set by `main`, not a flag).
    #[arg(skip)]
    pub nats_url_given: bool,
    /// Where to publish (the gateway's own variables: GRPC_PORT,
    /// WEBSOCKET_GATEWAY_PORT, NATS_URL, NATS_SUBJECT_PREFIX, INGEST_TOKEN);
    /// `--http-url` also serves `/wt/cert-hash` for WebTransport.
    #[command(flatten)]
    pub to: crate::publish::Endpoints,
    /// HTTP/gRPC requests in flight (vendors are spread over this many
    /// sequential lanes, so each vendor's updates stay in order).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub publish_concurrency: u16,

    /// Connections [default: 100; s1, s3: 10000; s2: 2000].
    #[arg(short = 'n', long)]
    pub conns: Option<usize>,
    /// Vendors; client i subscribes to vendor i % vendors [default: 10; s1, s3: 1000; s2: 1].
    #[arg(long)]
    pub vendors: Option<usize>,
    /// New connections offered per second [default: 1000; s1: 5000; s2, s3: 2000].
    #[arg(long)]
    pub connect_rate: Option<f64>,
    /// Handshakes (TCP + upgrade, or QUIC + session, then the subscribe ack) in flight at most [default: 200; s1, s3: 256].
    #[arg(long)]
    pub connect_concurrency: Option<usize>,
    /// Give up on one connection's handshake after this long (ms).
    #[arg(long, default_value_t = 15_000)]
    pub connect_timeout_ms: u64,
    /// Local source addresses to spread connections over when ephemeral
    /// ports run short (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    pub src_ips: Vec<IpAddr>,
    /// Wait after connecting before sampling RSS (ms) [default: 1000; s1: 3000].
    #[arg(long)]
    pub settle_ms: Option<u64>,
    /// Skip the readiness probe (one update per vendor every 500 ms until
    /// every client got one).
    #[arg(long)]
    pub no_ready_probe: bool,
    /// Give up on the readiness probe after this long (ms).
    #[arg(long, default_value_t = 20_000)]
    pub ready_timeout_ms: u64,

    /// Publish rates in updates/s across all vendors, one step each
    /// [default: 100; s1: none; s2: 5,10,…,1000; s3: 2000].
    #[arg(long, value_delimiter = ',')]
    pub rates: Option<Vec<f64>>,
    /// Seconds per step [default: 10; s3: 20].
    #[arg(short = 'T', long)]
    pub duration: Option<f64>,
    /// After a step, wait at most this long for late deliveries (ms) [default: 5000; s3: 10000].
    #[arg(long)]
    pub drain_ms: Option<u64>,
    /// A step fails when its p99 latency exceeds this (ms) [default: 250; s3: off].
    #[arg(long)]
    pub stop_p99_ms: Option<f64>,
    /// A loss does not fail a step.
    #[arg(long)]
    pub no_stop_on_loss: bool,
    /// Run a failed step again this many times before stopping (rides out noise).
    #[arg(long, default_value_t = 1)]
    pub step_retries: u32,
    /// Keep the connections open this long after the last step, before the
    /// final RSS sample (ms) [default: 0; s1: 2000].
    #[arg(long)]
    pub hold_ms: Option<u64>,

    /// Server process to sample: VmRSS (and CPU) of it and its descendants.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Runtime threads of the bench itself (1 = a single-threaded runtime,
    /// cheapest per message; use more to drive a big deployment).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
    /// Free-form label copied into the result.
    #[arg(long, default_value = "")]
    pub label: String,

    /// The area scenario's own options.
    #[command(flatten)]
    pub geo: GeoArgs,

    /// The checker's own options.
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// Options of `--scenario verify`; `--conns` clients over `--vendors`
/// vendors (client i follows vendor i % vendors), the first of `--rates`
/// for `--duration`, `--drain-ms` the longest wait for convergence and
/// `--settle-ms` the linger after it (late duplicates are still seen).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Checker (verify)")]
pub struct VerifyArgs {
    /// verify: session URLs to spread the clients over (client i on URL i % n;
    /// comma-separated, WebSocket only) [default: --url].
    #[arg(long = "verify-url", value_delimiter = ',')]
    pub urls: Vec<String>,
    /// verify: the gateway may conflate this path (slow clients, small
    /// WS_MAX_QUEUE_MESSAGES): losses are reported, not failed; duplicates,
    /// reordering and a wrong last value still fail.
    #[arg(long = "verify-conflated")]
    pub conflated: bool,
    /// verify: first pause before reconnecting after a close or a failed
    /// handshake (ms); doubles up to --reconnect-max-ms.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub reconnect_min_ms: u64,
    /// verify: longest pause between reconnect attempts (ms).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub reconnect_max_ms: u64,
    /// verify: most deliveries the run may record in all (--conns × updates
    /// per vendor); a larger run is refused rather than grow memory.
    #[arg(long = "verify-max-records", default_value_t = 20_000_000)]
    pub max_records: u64,
    /// verify: clients listed one by one in the JSON result (failing ones first).
    #[arg(long = "verify-details", default_value_t = 100)]
    pub details: usize,
}

/// Options of `--scenario s4` (areas); `--conns` are the area clients,
/// `--vendors` the walking vendors, the first of `--rates` the update rate
/// and `--duration` the length of each measured phase.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Area scenario (s4)")]
pub struct GeoArgs {
    /// s4: per-vendor (`subscribe_location`) clients of the comparison phase; 0 skips it.
    #[arg(long, default_value_t = 5000)]
    pub location_conns: usize,
    /// s4: vendors each per-vendor client follows (client i follows vendors i·k … i·k+k−1, modulo --vendors).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub follow: u16,
    /// s4: share of the area clients that pan.
    #[arg(long, default_value_t = 0.1)]
    pub pan_fraction: f64,
    /// s4: each panning client pans once per this period (ms).
    #[arg(long, default_value_t = 3000)]
    pub pan_every_ms: u64,
    /// s4: how far a pan moves the box (km).
    #[arg(long, default_value_t = 0.5)]
    pub pan_km: f64,
    /// s4: side of each client's box (km).
    #[arg(long, default_value_t = 2.0)]
    pub area_km: f64,
    /// s4: side of the city the vendors walk in (km), centred on Madrid (40.4169, -3.7035).
    #[arg(long, default_value_t = 30.0)]
    pub city_km: f64,
    /// s4: largest move of a vendor per update, each axis (m).
    #[arg(long, default_value_t = 50.0)]
    pub step_m: f64,
    /// s4: share of updates that put the vendor exactly on an edge of some
    /// client's box (edges are inside: this checks they are treated so).
    #[arg(long, default_value_t = 0.02)]
    pub edge_fraction: f64,
    /// s4: seed of the walk, the boxes and the pans (same seed, same run).
    #[arg(long, default_value_t = 4)]
    pub seed: u64,
    /// s4: skip the baseline phase (publishing with no client connected).
    #[arg(long)]
    pub no_baseline: bool,
}

impl BenchArgs {
    /// `--via`, or its default: HTTP, except for s4 with a NATS URL given.
    pub fn via(&self) -> Via {
        match self.via {
            Some(v) => v,
            None if matches!(self.scenario, Some(Scenario::S4 | Scenario::Verify)) && self.nats_url_given => Via::Nats,
            None => Via::Http,
        }
    }

    /// `--url`, or the default endpoint of `--transport` on the local gateway.
    pub fn session_url(&self) -> String {
        let port = self.to.http_port;
        match (&self.url, self.transport) {
            (Some(u), _) => u.clone(),
            (None, ClientTransport::Websocket) => format!("ws://127.0.0.1:{port}/ws/location"),
            (None, ClientTransport::Webtransport) => format!("https://127.0.0.1:{port}/wt/location"),
        }
    }
}

/// Everything a run needs, presets and flags merged.
#[derive(Debug, Clone)]
pub struct Plan {
    pub conns: usize,
    pub vendors: usize,
    pub connect_rate: f64,
    pub connect_concurrency: usize,
    pub settle_ms: u64,
    pub rates: Vec<f64>,
    pub duration: f64,
    pub drain_ms: u64,
    /// `None`: latency never fails a step.
    pub stop_p99_ms: Option<f64>,
    pub hold_ms: u64,
}

/// Step attempts are numbered into the update's `long` (below 180).
pub const MAX_ATTEMPTS: usize = 179;

impl Plan {
    /// Merges the preset (if any) with the flags and checks the result.
    pub fn resolve(a: &BenchArgs) -> anyhow::Result<Self> {
        let base = match a.scenario {
            None => Self {
                conns: 100,
                vendors: 10,
                connect_rate: 1000.0,
                connect_concurrency: 200,
                settle_ms: 1000,
                rates: vec![100.0],
                duration: 10.0,
                drain_ms: 5000,
                stop_p99_ms: Some(250.0),
                hold_ms: 0,
            },
            Some(Scenario::S1) => Self {
                conns: 10_000,
                vendors: 1000,
                connect_rate: 5000.0,
                connect_concurrency: 256,
                settle_ms: 3000,
                rates: vec![],
                duration: 10.0,
                drain_ms: 5000,
                stop_p99_ms: Some(250.0),
                hold_ms: 2000,
            },
            Some(Scenario::S2) => Self {
                conns: 2000,
                vendors: 1,
                connect_rate: 2000.0,
                connect_concurrency: 200,
                settle_ms: 1000,
                rates: [5, 10, 15, 20, 25, 35, 50, 75, 100, 150, 200, 300, 400, 500, 750, 1000]
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                duration: 10.0,
                drain_ms: 5000,
                stop_p99_ms: Some(250.0),
                hold_ms: 0,
            },
            Some(Scenario::S3) => Self {
                conns: 10_000,
                vendors: 1000,
                connect_rate: 2000.0,
                connect_concurrency: 256,
                settle_ms: 1000,
                rates: vec![2000.0],
                duration: 20.0,
                drain_ms: 10_000,
                stop_p99_ms: None,
                hold_ms: 0,
            },
            // drain_ms: the longest convergence settle; settle_ms: the pause
            // after placing the vendors and after each connect.
            Some(Scenario::S4) => Self {
                conns: 5000,
                vendors: 10_000,
                connect_rate: 2000.0,
                connect_concurrency: 256,
                settle_ms: 1000,
                rates: vec![2000.0],
                duration: 15.0,
                drain_ms: 5000,
                stop_p99_ms: None,
                hold_ms: 0,
            },
            // drain_ms: the longest wait for convergence; settle_ms: the
            // linger after it.
            Some(Scenario::Verify) => Self {
                conns: 30,
                vendors: 10,
                connect_rate: 1000.0,
                connect_concurrency: 200,
                settle_ms: 500,
                rates: vec![200.0],
                duration: 10.0,
                drain_ms: 10_000,
                stop_p99_ms: None,
                hold_ms: 0,
            },
        };
        let plan = Self {
            conns: a.conns.unwrap_or(base.conns),
            vendors: a.vendors.unwrap_or(base.vendors),
            connect_rate: a.connect_rate.unwrap_or(base.connect_rate),
            connect_concurrency: a.connect_concurrency.unwrap_or(base.connect_concurrency),
            settle_ms: a.settle_ms.unwrap_or(base.settle_ms),
            rates: a.rates.clone().unwrap_or(base.rates),
            duration: a.duration.unwrap_or(base.duration),
            drain_ms: a.drain_ms.unwrap_or(base.drain_ms),
            stop_p99_ms: a.stop_p99_ms.or(base.stop_p99_ms),
            hold_ms: a.hold_ms.unwrap_or(base.hold_ms),
        };
        plan.check(a)?;
        Ok(plan)
    }

    fn check(&self, a: &BenchArgs) -> anyhow::Result<()> {
        if self.conns == 0 || self.vendors == 0 {
            bail!("--conns and --vendors must be at least 1");
        }
        // Bounded so that every schedule computed from them is a valid Duration.
        let sane = |x: f64| (0.01..=10_000_000.0).contains(&x);
        if !sane(self.connect_rate) {
            bail!("--connect-rate must be between 0.01 and 10,000,000 per second");
        }
        if self.connect_concurrency == 0 {
            bail!("--connect-concurrency must be at least 1");
        }
        if !self.rates.iter().all(|r| sane(*r)) {
            bail!("--rates must be between 0.01 and 10,000,000 updates per second");
        }
        if !(self.duration > 0.0 && self.duration <= 86_400.0) {
            bail!("--duration must be more than 0 and at most 86400 seconds");
        }
        let attempts = self.rates.len().saturating_mul(a.step_retries as usize + 1);
        if attempts > MAX_ATTEMPTS {
            bail!("at most {MAX_ATTEMPTS} step attempts (--rates × (--step-retries + 1)); got {attempts}");
        }
        if a.scenario == Some(Scenario::S4) {
            self.check_geo(a)?;
        }
        if a.scenario == Some(Scenario::Verify) {
            self.check_verify(a)?;
        }
        let last = format!("{}{}", a.vendor_prefix, self.vendors - 1);
        if venta_protocol::VendorId::parse(&last).is_err() {
            bail!("--vendor-prefix {:?} does not make valid vendor ids ({last:?})", a.vendor_prefix);
        }
        Ok(())
    }
}

impl Plan {
    fn check_verify(&self, a: &BenchArgs) -> anyhow::Result<()> {
        let v = &a.verify;
        if self.rates.len() != 1 {
            bail!("--scenario verify publishes at one rate: give one value to --rates");
        }
        if v.reconnect_min_ms > v.reconnect_max_ms {
            bail!("--reconnect-min-ms must not exceed --reconnect-max-ms");
        }
        if v.urls.len() > 1 && a.transport != ClientTransport::Websocket {
            bail!("several --verify-url are for WebSocket clients only");
        }
        let per_vendor = (self.rates[0] * self.duration / self.vendors as f64).ceil();
        let records = per_vendor * self.conns as f64;
        if records > v.max_records as f64 || per_vendor >= super::marker::SEQ_WRAP as f64 {
            bail!(
                "this run would record about {records:.0} deliveries (--conns × --rates × --duration / --vendors), \
                 over --verify-max-records {}: lower one, or raise the bound",
                v.max_records
            );
        }
        Ok(())
    }

    fn check_geo(&self, a: &BenchArgs) -> anyhow::Result<()> {
        let g = &a.geo;
        if self.rates.len() != 1 {
            bail!("--scenario s4 publishes at one rate: give one value to --rates");
        }
        if a.transport != ClientTransport::Websocket {
            bail!("--scenario s4 speaks WebSocket only (its clients follow areas)");
        }
        if !(0.0..=1.0).contains(&g.pan_fraction) || !(0.0..=1.0).contains(&g.edge_fraction) {
            bail!("--pan-fraction and --edge-fraction must be between 0 and 1");
        }
        if !(1.0..=200.0).contains(&g.city_km) {
            bail!("--city-km must be between 1 and 200");
        }
        if !(g.area_km > 0.0 && g.area_km <= g.city_km && g.area_km * std::f64::consts::SQRT_2 <= 50.0) {
            bail!("--area-km must be more than 0, at most --city-km, and its diagonal at most 50 km (GEO_MAX_AREA_KM)");
        }
        if !(0.0..=g.city_km).contains(&g.pan_km) || !(0.0..=10_000.0).contains(&g.step_m) {
            bail!("--pan-km must be between 0 and --city-km, --step-m between 0 and 10000");
        }
        if g.pan_every_ms < 100 {
            bail!("--pan-every-ms must be at least 100");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        Plan::resolve(&cli.bench)
    }

    #[test]
    fn presets_fill_in_and_flags_win() -> anyhow::Result<()> {
        let p = plan(&["--scenario", "s2"])?;
        assert_eq!((p.conns, p.vendors, p.rates.len(), p.stop_p99_ms), (2000, 1, 16, Some(250.0)));
        let p = plan(&["--scenario", "s2", "--conns", "50", "--rates", "1,2"])?;
        assert_eq!((p.conns, p.vendors, p.rates.clone()), (50, 1, vec![1.0, 2.0]));
        let p = plan(&["--scenario", "s3"])?;
        assert_eq!(
            (p.conns, p.vendors, p.rates.clone(), p.duration, p.stop_p99_ms),
            (10_000, 1000, vec![2000.0], 20.0, None)
        );
        let p = plan(&["--scenario", "s1"])?;
        assert!(p.rates.is_empty());
        let p = plan(&["--scenario", "s3", "--stop-p99-ms", "100"])?;
        assert_eq!(p.stop_p99_ms, Some(100.0));
        Ok(())
    }

    #[test]
    fn transport_aliases_and_default_urls() -> anyhow::Result<()> {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()));
        let a = parse(&["--http-port", "5006"])?.bench;
        assert_eq!(
            (a.transport, a.session_url().as_str()),
            (ClientTransport::Websocket, "ws://127.0.0.1:5006/ws/location")
        );
        let a = parse(&["--transport", "wt", "--http-port", "5006"])?.bench;
        assert_eq!(
            (a.transport, a.session_url().as_str(), a.wt_delivery),
            (ClientTransport::Webtransport, "https://127.0.0.1:5006/wt/location", WtDelivery::Stream)
        );
        let a =
            parse(&["--transport", "webtransport", "--url", "https://h:1/wt/location", "--wt-delivery", "datagram"])?
                .bench;
        assert_eq!((a.session_url().as_str(), a.wt_delivery), ("https://h:1/wt/location", WtDelivery::Datagram));
        assert!(parse(&["--wt-cert-hash", "ab", "--wt-system-roots"]).is_err());
        Ok(())
    }

    #[test]
    fn s4_publishes_over_nats_only_when_a_nats_url_is_given() -> anyhow::Result<()> {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()));
        let mut a = parse(&["--scenario", "s4"])?.bench;
        assert_eq!(a.via(), Via::Http);
        a.nats_url_given = true;
        assert_eq!(a.via(), Via::Nats);
        let mut a = parse(&["--scenario", "s4", "--via", "grpc"])?.bench;
        a.nats_url_given = true;
        assert_eq!(a.via(), Via::Grpc);
        let mut a = parse(&["--scenario", "s3"])?.bench;
        a.nats_url_given = true;
        assert_eq!(a.via(), Via::Http, "the other scenarios keep HTTP");
        let p = plan(&["--scenario", "s4"])?;
        assert_eq!((p.conns, p.vendors, p.rates.clone()), (5000, 10_000, vec![2000.0]));
        assert!(plan(&["--scenario", "s4", "--rates", "1,2"]).is_err());
        assert!(plan(&["--scenario", "s4", "--area-km", "40"]).is_err(), "over GEO_MAX_AREA_KM");
        assert!(plan(&["--scenario", "s4", "--transport", "wt"]).is_err());
        Ok(())
    }

    #[test]
    fn verify_runs_at_one_rate_and_within_its_record_bound() -> anyhow::Result<()> {
        let p = plan(&["--scenario", "verify"])?;
        assert_eq!((p.conns, p.vendors, p.rates.clone(), p.duration), (30, 10, vec![200.0], 10.0));
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()));
        let mut a =
            parse(&["--scenario", "verify", "--verify-url", "ws://a:1/ws/location,ws://b:2/ws/location"])?.bench;
        assert_eq!(a.verify.urls.len(), 2);
        a.nats_url_given = true;
        assert_eq!(a.via(), Via::Nats);
        assert!(plan(&["--scenario", "verify", "--rates", "1,2"]).is_err());
        assert!(plan(&["--scenario", "verify", "--reconnect-min-ms", "500", "--reconnect-max-ms", "100"]).is_err());
        // 1,000 clients × 100,000 updates per vendor: 10⁸ records, over the bound.
        assert!(plan(&["--scenario", "verify", "--conns", "1000", "--vendors", "1", "--rates", "10000"]).is_err());
        let wt = [
            "--scenario",
            "verify",
            "--transport",
            "wt",
            "--verify-url",
            "https://a:1/wt/location,https://b:2/wt/location",
        ];
        assert!(plan(&wt).is_err());
        Ok(())
    }

    #[test]
    fn nonsense_is_refused() {
        for args in [
            &["--conns", "0"][..],
            &["--rates", "10,-1"],
            &["--duration", "0"],
            &["--connect-rate", "0"],
            &["--connect-rate", "1e-300"],
            &["--rates", "NaN"],
            &["--duration", "1e300"],
            &["--vendor-prefix", "a.b"],
        ] {
            assert!(plan(args).is_err(), "{args:?} accepted");
        }
    }
}
