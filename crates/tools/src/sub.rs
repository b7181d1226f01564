//! `venta sub`: follow vendors as a client does and print every update it
//! receives, one JSON line each on stdout, as `nats sub` prints messages:
//! to see what a deployment's clients actually get (after auth, validation,
//! fan-out and the last-value snapshot), not what was put on NATS.
//!
//! The subscribes go out together and the answers are read as they come,
//! so an update that arrives between two acks (a snapshot, a live update)
//! is printed, not skipped. Everything that is not an update (acks,
//! errors, the close) goes to stderr, so stdout can be piped into `jq`.

use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;
use venta_client::wt::Trust;
use venta_client::{Channel, Client, Event, Options, Subscribe};

use crate::defaults;

/// Connecting, and each subscribe's answer, must come within this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// `userId` of the subscribes when neither `--user` nor a token says.
const DEFAULT_USER: &str = "venta-sub";

/// A channel to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChannelArg {
    /// `location_updated`: vendor positions.
    Location,
    /// `vendor_updated`: vendor data.
    Vendor,
}

impl From<ChannelArg> for Channel {
    fn from(c: ChannelArg) -> Self {
        match c {
            ChannelArg::Location => Self::Location,
            ChannelArg::Vendor => Self::Vendor,
        }
    }
}

/// Options of `sub`.
#[derive(Debug, Args)]
#[command(
    about = "Print vendors' live updates as a client receives them, one JSON line each (like `nats sub`)",
    long_about = "Connect to a gateway as a client, subscribe to every VENDOR_ID on each --channel and print \
every update received (location_updated, vendor_updated; `\"snapshot\": true` in `data` for the last known \
value sent on subscribe) as one JSON line on stdout, exactly as the server sent it. Acks, errors and the close \
go to stderr.\n\nWebSocket by default (ws://…/ws/location); an https://…/wt/location --url uses WebTransport, \
trusting the certificate hash served at <--http-url>/wt/cert-hash, or --wt-cert-hash, or --wt-system-roots.\n\n\
Exit status: 0 after --count updates or on SIGINT/SIGTERM, 1 when the gateway could not be reached, refused a \
subscribe or closed the session, 2 for invalid options."
)]
pub struct SubArgs {
    /// Vendors to follow.
    #[arg(required_unless_present = "bbox", value_name = "VENDOR_ID")]
    vendors: Vec<String>,
    /// Also follow every vendor inside this box, as an area subscription
    /// (`west > east` crosses the antimeridian): prints the snapshot, then
    /// every `vendor_entered`, move and `vendor_left` of the area.
    #[arg(long, value_name = "SOUTH,WEST,NORTH,EAST", value_delimiter = ',', allow_negative_numbers = true)]
    bbox: Option<Vec<f64>>,
    /// Channels to follow, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "location")]
    channel: Vec<ChannelArg>,
    /// Session endpoint [default: ws://127.0.0.1:<--http-port>/ws/location;
    /// https://HOST:WT_PORT/wt/location for WebTransport].
    #[arg(long)]
    url: Option<String>,
    /// The gateway's HTTP port, for the default --url and --http-url.
    #[arg(long, env = "WEBSOCKET_GATEWAY_PORT", default_value_t = defaults::HTTP_PORT)]
    http_port: u16,
    /// HTTP base URL, where WebTransport's certificate hash is fetched
    /// [default: http://127.0.0.1:<--http-port>].
    #[arg(long)]
    http_url: Option<String>,
    /// Client JWT, sent as `?token=` (when the gateway has auth on).
    #[arg(long, alias = "token")]
    jwt: Option<String>,
    /// `userId` of the subscribes [default: the token's `sub`, else venta-sub].
    #[arg(long)]
    user: Option<String>,
    /// Exit after printing this many updates.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// WebTransport: SHA-256 of the certificate to trust (64 hex digits,
    /// colons allowed; comma-separated during a rotation).
    #[arg(long, value_delimiter = ',')]
    wt_cert_hash: Vec<String>,
    /// WebTransport: validate the certificate against the system's roots.
    #[arg(long, conflicts_with = "wt_cert_hash")]
    wt_system_roots: bool,
}

impl SubArgs {
    fn session_url(&self) -> String {
        self.url.clone().unwrap_or_else(|| format!("ws://127.0.0.1:{}/ws/location", self.http_port))
    }

    fn http_url(&self) -> String {
        match &self.http_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://127.0.0.1:{}", self.http_port),
        }
    }
}

/// The areaId of the `--bbox` subscription.
const AREA_ID: &str = "venta-sub";

/// Whether a server message is an update (live or snapshot, of a vendor or
/// of the area): what is printed.
fn is_update(m: &Value) -> bool {
    matches!(
        m["type"].as_str(),
        Some("location_updated" | "vendor_updated" | "area_snapshot" | "vendor_entered" | "vendor_left")
    )
}

/// Runs the subcommand until `--count` updates, a signal, or the session ends.
pub async fn run(args: SubArgs) -> anyhow::Result<()> {
    for v in &args.vendors {
        venta_protocol::VendorId::parse(v).map_err(|_| anyhow::anyhow!("{v:?} is not a vendor id"))?;
    }
    let url = args.session_url();
    let mut options = Options::default();
    if let Some(t) = &args.jwt {
        options = options.token(t.clone());
    }
    if url.starts_with("https://") {
        options = options.trust(wt_trust(&args).await?);
    }
    let user = match (&args.user, &args.jwt) {
        (Some(u), _) => u.clone(),
        (None, Some(t)) => crate::bench::token_sub(t)?,
        (None, None) => DEFAULT_USER.to_owned(),
    };
    let mut client = tokio::time::timeout(ANSWER_TIMEOUT, Client::connect(&url, &options))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {url}: timed out"))?
        .with_context(|| format!("connecting to {url}"))?;
    // Request ids say which subscribe an ack or an error answers.
    let mut pending = Vec::new();
    if let Some(b) = &args.bbox {
        let [south, west, north, east] = b[..] else {
            bail!("--bbox takes four numbers: south,west,north,east");
        };
        let message = serde_json::json!({"type": "subscribe_area", "id": "sub-area", "data": {
            "areaId": AREA_ID, "userId": user, "bbox": {"south": south, "west": west, "north": north, "east": east}}});
        client.send(&message).await.context("subscribing to the area")?;
        pending.push("sub-area".to_owned());
    }
    for channel in dedup(&args.channel) {
        for vendor in dedup(&args.vendors) {
            let id = format!("sub-{}-{vendor}", Channel::from(channel).as_str());
            let message = Subscribe::new(channel.into(), &vendor, &user).id(&id).message();
            client.send(&message).await.with_context(|| format!("subscribing to {vendor}"))?;
            pending.push(id);
        }
    }
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let acks_due = tokio::time::sleep(ANSWER_TIMEOUT);
    tokio::pin!(acks_due);
    let mut printed = 0u64;
    let mut out = std::io::stdout();
    loop {
        let event = tokio::select! {
            () = &mut signal => return Ok(()),
            () = &mut acks_due, if !pending.is_empty() => {
                bail!("no answer from {url} to {} within {ANSWER_TIMEOUT:?}", pending.join(", "))
            }
            e = client.next_event() => e.with_context(|| format!("reading from {url}"))?,
        };
        let message = match event {
            Event::Message(m) => m,
            Event::Closed(c) => bail!("{url}: {c}"),
        };
        if is_update(&message) {
            // Line-buffered: each update leaves as it arrives. A closed
            // stdout (`| head -1`) ends the run quietly.
            if writeln!(out, "{message}").and_then(|()| out.flush()).is_err() {
                return Ok(());
            }
            printed += 1;
            if args.count.is_some_and(|n| printed >= n) {
                return Ok(());
            }
            continue;
        }
        let id = message["id"].as_str();
        let answered = id.and_then(|id| pending.iter().position(|p| p == id));
        match (message["type"].as_str(), answered) {
            (Some("subscribed"), Some(i)) => {
                pending.swap_remove(i);
                let data = &message["data"];
                let channel = data["channel"].as_str().unwrap_or("?");
                let what = data["vendorId"].as_str().or(data["areaId"].as_str()).unwrap_or("?");
                eprintln!("[sub] subscribed to {channel} of {what}");
            }
            (Some("error"), Some(_)) => bail!("{url} refused the subscribe: {}", message["data"]),
            _ => eprintln!("[sub] {message}"),
        }
    }
}

/// Each value once, in the order given.
fn dedup<T: PartialEq + Clone>(items: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(i) {
            out.push(i.clone());
        }
    }
    out
}

/// WebTransport trust from the flags, or the hashes the gateway publishes.
async fn wt_trust(args: &SubArgs) -> anyhow::Result<Trust> {
    crate::bench::wt_trust(args.wt_system_roots, &args.wt_cert_hash, &args.http_url()).await
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sub: SubArgs,
    }

    fn parse(args: &[&str]) -> Result<SubArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("sub").chain(args.iter().copied())).map(|c| c.sub)
    }

    #[test]
    fn defaults_follow_the_local_gateway() -> Result<(), clap::Error> {
        let a = parse(&["v1", "--http-port", "5100"])?;
        assert_eq!(a.session_url(), "ws://127.0.0.1:5100/ws/location");
        assert_eq!(a.http_url(), "http://127.0.0.1:5100");
        assert_eq!(a.channel, vec![ChannelArg::Location]);
        let a = parse(&["v1", "v2", "--channel", "location,vendor", "--url", "wss://h/ws/location"])?;
        assert_eq!((a.vendors.len(), a.channel.len(), a.session_url().as_str()), (2, 2, "wss://h/ws/location"));
        Ok(())
    }

    #[test]
    fn nonsense_is_refused() {
        for args in [
            &[][..],
            &["v1", "--count", "0"],
            &["v1", "--channel", "weather"],
            &["v1", "--wt-cert-hash", "ab", "--wt-system-roots"],
            &["--bbox", "a,b,c,d"],
        ] {
            assert!(parse(args).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn a_box_alone_is_enough() -> Result<(), clap::Error> {
        let a = parse(&["--bbox", "40.4,-3.72,40.43,-3.68"])?;
        assert_eq!(a.bbox, Some(vec![40.4, -3.72, 40.43, -3.68]));
        assert!(a.vendors.is_empty());
        Ok(())
    }

    #[test]
    fn only_updates_are_printed() {
        assert!(is_update(&json!({"type": "location_updated", "data": {}})));
        assert!(is_update(&json!({"type": "vendor_updated", "data": {"snapshot": true}})));
        for other in ["subscribed", "error", "pong", "refreshed"] {
            assert!(!is_update(&json!({"type": other})), "{other}");
        }
        assert!(!is_update(&json!({"data": {}})));
    }

    #[test]
    fn dedup_keeps_the_first_of_each() {
        assert_eq!(dedup(&["a", "b", "a", "c", "b"]), vec!["a", "b", "c"]);
    }
}
