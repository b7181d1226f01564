//! `venta bench`: a load generator for users to test their own
//! deployment, speaking the client protocol like any client would.
//!
//! - [`args`]: flags and the s1/s2/s3 presets.
//! - [`transport`]: the client-side seam (`Connector`/`Conn`); [`ws`] is
//!   the WebSocket JSON implementation, [`wt`] the WebTransport MessagePack
//!   one; [`incoming`] decodes what either receives.
//! - [`connect`]: opening N clients at a controlled rate.
//! - [`publisher`]: paced publishing over NATS, HTTP or gRPC.
//! - [`marker`]: sequence, phase and send time carried in each update.
//! - [`stats`]: counters and latency histograms fed by the clients.
//! - [`run`]: the phases and stop conditions; [`report`]: progress and JSON.
//! - [`s4`]: the area scenario (its own clients, walk, and convergence check).
//! - [`verify`]: the checker (lost, gap, duplicated, out-of-order, convergence).
//! - [`sys`]: RLIMIT_NOFILE, ephemeral ports, /proc sampling.

mod args;
mod connect;
mod incoming;
mod marker;
mod publisher;
mod report;
mod run;
mod s4;
mod stats;
mod sys;
mod transport;
mod verify;
mod ws;
mod wt;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

pub use args::BenchArgs;
use args::{ClientTransport, Plan};
pub use wt::trust_from as wt_trust;

/// Exit status of a checker run whose path broke its promise.
const VERIFY_FAILED: u8 = 3;

/// Runs the subcommand on a runtime of its own (`--threads`).
pub fn main(args: BenchArgs) -> ExitCode {
    let plan = match Plan::resolve(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(usize::from(args.threads)).enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(&args, &plan));
    // Clients, lanes and samplers are still running: do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(v) => {
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{v}").and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            // The checker's verdict is its exit status too (scripts, CI).
            if args.scenario == Some(args::Scenario::Verify) && v["ok"] != true {
                return ExitCode::from(VERIFY_FAILED);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &BenchArgs, plan: &Plan) -> anyhow::Result<serde_json::Value> {
    if args.scenario == Some(args::Scenario::S4) {
        return s4::run(args, plan).await;
    }
    if args.scenario == Some(args::Scenario::Verify) {
        return verify::run(args, plan).await;
    }
    // WebTransport clients share one UDP socket per source address: neither
    // a descriptor nor an ephemeral port per connection.
    let tcp = args.transport == ClientTransport::Websocket;
    let sockets = if tcp { plan.conns } else { args.src_ips.len().max(1) };
    let nofile = sys::ensure_nofile(sockets)?;
    eprintln!(
        "[bench] {} {} connections over {} vendors, rates {:?}/s × {} s, publishing via {}; RLIMIT_NOFILE {nofile}",
        plan.conns,
        args.transport.as_str(),
        plan.vendors,
        plan.rates,
        plan.duration,
        format!("{:?}", args.via()).to_lowercase()
    );
    if let Some(w) = sys::ephemeral_port_warning(plan.conns, args.src_ips.len()).filter(|_| tcp) {
        eprintln!("[bench] warning: {w}");
    }
    for note in capacity_notes(plan.conns, args.jwt.is_some()) {
        eprintln!("[bench] note: {note}");
    }
    let token_user = match &args.jwt {
        Some(t) => Some(token_sub(t)?),
        None => None,
    };
    let fixed_user = args.user.clone().or(token_user);
    let user = move |i: usize| fixed_user.clone().unwrap_or_else(|| format!("u{i}"));
    let vendors: Vec<String> = (0..plan.vendors).map(|v| format!("{}{v}", args.vendor_prefix)).collect();
    // The clients' side first: a wrong --url is reported as such, not as
    // whatever the publisher finds wrong.
    let clients = match args.transport {
        ClientTransport::Websocket => {
            Clients::Ws(ws::WsConnector::new(&args.session_url(), args.jwt.as_deref(), &args.vendor_prefix).await?)
        }
        ClientTransport::Webtransport => Clients::Wt(wt::WtConnector::new(args).await?),
    };
    let stats = Arc::new(stats::Stats::new(plan.vendors));
    let publisher = publisher::Publisher::connect(args, vendors, Arc::clone(&stats)).await?;
    let r = run::Run { args, plan, stats, publisher, user: &user };
    Ok(match clients {
        Clients::Ws(c) => run::drive(r, Arc::new(c)).await,
        Clients::Wt(c) => run::drive(r, Arc::new(c)).await,
    })
}

/// What a gateway with default limits would refuse of this run, said before
/// connecting (the presets open 2,000 to 10,000 clients).
fn capacity_notes(conns: usize, one_jwt: bool) -> Vec<String> {
    use crate::defaults::{MAX_CONNECTIONS, MAX_CONNECTIONS_PER_USER};
    let mut notes = Vec::new();
    if conns > MAX_CONNECTIONS {
        notes.push(format!(
            "this run opens {conns} connections; a gateway with default settings admits {MAX_CONNECTIONS} \
             (WS_MAX_CONNECTIONS={MAX_CONNECTIONS}): start it with WS_MAX_CONNECTIONS={conns} or more"
        ));
    }
    if one_jwt && conns > MAX_CONNECTIONS_PER_USER {
        notes.push(format!(
            "every client uses one --jwt (one user); a default gateway admits {MAX_CONNECTIONS_PER_USER} connections per user: \
             start it with WS_MAX_CONNECTIONS_PER_USER={conns} or more"
        ));
    }
    notes
}

/// The connector of `--transport` (the run is generic over it).
enum Clients {
    Ws(ws::WsConnector),
    Wt(wt::WtConnector),
}

/// The token's `sub`: with auth on, a subscribe's `userId` must equal it.
/// Read without verification: the gateway is the one that verifies.
pub fn token_sub(token: &str) -> anyhow::Result<String> {
    let claims: serde_json::Value =
        jsonwebtoken::dangerous::insecure_decode_claims(token).context("--jwt is not a JWT")?;
    claims["sub"].as_str().map(str::to_owned).context("--jwt has no `sub` claim")
}
