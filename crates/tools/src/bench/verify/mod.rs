//! `--scenario verify`: a Jepsen-style checker. Every client records each
//! delivery (and each reconnect) while the bench publishes numbered updates
//! (the per-vendor sequence of [`super::marker`]) at one rate; when
//! publishing stops and the clients have converged (or `--drain-ms` ran
//! out), [`check::judge`] sets each history against what was published and
//! the run reports, per client and in total, lost, gap, duplicated and
//! out-of-order updates and whether the last value held is the last one
//! published. A run that breaks its path's promise ([`check::Path`]) exits 3.
//!
//! Clients may be spread over several gateways (`--verify-url`), and
//! reconnect and subscribe again when their gateway goes away: that is what
//! lets a test restart a gateway or kill a NATS node mid-run and still ask
//! "was anything lost while connected, and did everyone converge?".

pub mod check;
mod client;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use super::args::{BenchArgs, ClientTransport, Plan, WtDelivery};
use super::marker;
use super::publisher::Publisher;
use super::stats::{Stats, round3};
use super::sys;
use super::transport::{Connector, Target};
use super::ws::WsConnector;
use super::wt::WtConnector;
use check::{ClientVerdict, Counts, Path, PubLog};
use client::{History, Live, Settings};

/// Progress to stderr this often while publishing (tests wait on it).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Records per client beyond the updates it can be owed (acks, closes,
/// snapshots, duplicates).
const RECORD_SLACK: usize = 10_000;

/// Runs the checker; the result's `ok` says whether the path's promise held.
pub async fn run(args: &BenchArgs, plan: &Plan) -> anyhow::Result<Value> {
    let v = &args.verify;
    let path = match (args.transport, args.wt_delivery) {
        (ClientTransport::Webtransport, WtDelivery::Datagram) => Path::Datagram,
        _ if v.conflated => Path::Conflated,
        _ => Path::Lossless,
    };
    let urls = if v.urls.is_empty() { vec![args.session_url()] } else { v.urls.clone() };
    let tcp = args.transport == ClientTransport::Websocket;
    sys::ensure_nofile(if tcp { plan.conns } else { urls.len() })?;
    match args.transport {
        ClientTransport::Websocket => {
            let mut cs = Vec::new();
            for u in &urls {
                cs.push(Arc::new(WsConnector::new(u, args.jwt.as_deref(), &args.vendor_prefix).await?));
            }
            drive(args, plan, path, &urls, cs).await
        }
        ClientTransport::Webtransport => {
            if urls.len() > 1 {
                bail!("--verify-url: WebTransport clients go to one --url (each gateway has its own certificate)");
            }
            let c = Arc::new(WtConnector::new(args).await?);
            drive(args, plan, path, &urls, vec![c]).await
        }
    }
}

async fn drive<C: Connector>(
    args: &BenchArgs,
    plan: &Plan,
    path: Path,
    urls: &[String],
    connectors: Vec<Arc<C>>,
) -> anyhow::Result<Value> {
    let t_run = Instant::now();
    let rate = plan.rates.first().copied().unwrap_or(100.0);
    let total = (rate * plan.duration).round().max(1.0) as u64;
    let per_vendor = usize::try_from(total.div_ceil(plan.vendors as u64)).unwrap_or(usize::MAX);
    let vendors: Vec<String> = (0..plan.vendors).map(|v| format!("{}{v}", args.vendor_prefix)).collect();
    eprintln!(
        "[verify] {} {} clients over {} gateway(s) and {} vendors, {total} updates at {rate}/s via {}, path {}",
        plan.conns,
        args.transport.as_str(),
        urls.len(),
        plan.vendors,
        format!("{:?}", args.via()).to_lowercase(),
        path.as_str()
    );
    let publisher = Publisher::connect(args, vendors, Arc::new(Stats::new(plan.vendors))).await?;
    let run_start_ns = marker::now_ns();
    let token_user = match &args.jwt {
        Some(t) => Some(super::token_sub(t)?),
        None => None,
    };
    let settings = Arc::new(Settings {
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        reconnect_min: Duration::from_millis(args.verify.reconnect_min_ms),
        reconnect_max: Duration::from_millis(args.verify.reconnect_max_ms),
        max_recs: per_vendor.saturating_mul(2).saturating_add(RECORD_SLACK),
        run_start_ns,
    });
    let live = Arc::new(Live::new(plan.conns));
    let handshakes = Arc::new(Semaphore::new(plan.connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let vendor_of = |i: usize| i % plan.vendors;

    // Connect, at --connect-rate.
    let mut tasks = Vec::with_capacity(plan.conns);
    let t0 = Instant::now();
    for i in 0..plan.conns {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / plan.connect_rate)).into()).await;
        let v = vendor_of(i);
        let target = Target {
            vendor_index: u32::try_from(v).unwrap_or(u32::MAX),
            vendor: format!("{}{v}", args.vendor_prefix),
            user: args.user.clone().or_else(|| token_user.clone()).unwrap_or_else(|| format!("u{i}")),
            src: (!args.src_ips.is_empty()).then(|| args.src_ips[i % args.src_ips.len()]),
        };
        tasks.push(tokio::spawn(client::client(
            Arc::clone(&connectors[i % connectors.len()]),
            target,
            i,
            Arc::clone(&live),
            Arc::clone(&handshakes),
            Arc::clone(&settings),
            stop_rx.clone(),
        )));
    }
    let all_acked = || live.acked.iter().all(|a| a.load(Relaxed));
    let connect_deadline = t0 + settings.connect_timeout + Duration::from_secs(5);
    while !all_acked() && Instant::now() < connect_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let subscribed = live.acked.iter().filter(|a| a.load(Relaxed)).count();
    eprintln!("[verify] subscribed {subscribed}/{} in {:.2} s", plan.conns, t0.elapsed().as_secs_f64());
    if subscribed == 0 {
        let _ = stop_tx.send(true);
        bail!("no client could subscribe: {:?}", live.errors());
    }

    // Publish: vendor by vendor, round-robin, paced; each sequence's time
    // is taken before it is handed over.
    let mut log: PubLog = vec![Vec::with_capacity(per_vendor); plan.vendors];
    eprintln!("[verify] publishing");
    let t_pub = Instant::now();
    let mut last_progress = Instant::now();
    for k in 0..total {
        let v = (k % plan.vendors as u64) as usize;
        let seq = log[v].len() as u64;
        log[v].push(marker::now_ns());
        publisher.publish(v, seq, 1).await;
        let next = t_pub + Duration::from_secs_f64((k + 1) as f64 / rate);
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let connected = live.connected.iter().filter(|c| c.load(Relaxed)).count();
            eprintln!("[verify] published {}/{total}, connected {connected}/{}", k + 1, plan.conns);
        }
        tokio::time::sleep_until(next.into()).await;
    }
    publisher.flush().await;
    let publish_s = t_pub.elapsed().as_secs_f64();
    let publish_errors = publisher.stats().errors.load(Relaxed);
    eprintln!("[verify] published {total}/{total} in {publish_s:.2} s; waiting for convergence");

    // Drain: until every client is connected and holds its vendor's last value.
    let last: Vec<u64> = log.iter().map(|l| l.len().checked_sub(1).map_or(client::NONE, |s| s as u64)).collect();
    let converged = || {
        (0..plan.conns).all(|i| {
            live.connected[i].load(Relaxed) && live.held[i].load(Relaxed) == last[vendor_of(i)]
                || last[vendor_of(i)] == client::NONE
        })
    };
    let t_drain = Instant::now();
    while !converged() && t_drain.elapsed() < Duration::from_millis(plan.drain_ms) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let converge_ms = converged().then(|| t_drain.elapsed().as_millis() as u64);
    // Linger: a duplicate or stray update arriving late is still seen.
    tokio::time::sleep(Duration::from_millis(plan.settle_ms)).await;
    let connected_at_end = live.connected.iter().filter(|c| c.load(Relaxed)).count();
    let _ = stop_tx.send(true);
    let mut histories = Vec::with_capacity(tasks.len());
    for t in tasks {
        histories.push(tokio::time::timeout(Duration::from_secs(5), t).await.ok().and_then(Result::ok));
    }

    let result = Judged::new(&histories, &log, plan);
    let mut reasons = result.reasons(path);
    if publish_errors > 0 {
        reasons.push(format!("{publish_errors} publishes failed: what they carried cannot be owed"));
    }
    if subscribed < plan.conns {
        reasons.push(format!("{} clients never subscribed", plan.conns - subscribed));
    }
    let ok = reasons.is_empty();
    result.summary(path, ok, &reasons);
    let ms = |ns: u64| ns / 1_000_000;
    let span = |s: Option<(u64, u64)>| s.map(|(a, b)| json!([ms(a), ms(b)]));
    let mut order: Vec<usize> = (0..result.verdicts.len()).collect();
    order.sort_by_key(|i| !result.verdicts[*i].as_ref().is_none_or(|v| v.fails(path)));
    let clients: Vec<Value> = order
        .into_iter()
        .take(args.verify.details)
        .map(|i| match &result.verdicts[i] {
            None => json!({"client": i, "url": i % urls.len(), "vendor": vendor_of(i), "verdict": null}),
            Some(v) => json!({
                "client": i, "url": i % urls.len(), "vendor": vendor_of(i),
                "delivered": v.counts.delivered, "snapshots": v.counts.snapshots,
                "lost": v.counts.lost, "gap": v.counts.gap, "dup": v.counts.dup, "ooo": v.counts.ooo,
                "foreign": v.counts.foreign, "reconnects": v.counts.reconnects,
                "held": v.held, "last_published": v.last_published, "converged": v.converged,
                "lost_span_ms": span(v.lost_span_ns), "gap_span_ms": span(v.gap_span_ns),
            }),
        })
        .collect();
    let per_url: Vec<Value> = (0..urls.len())
        .map(|u| {
            let (c, n, nc) = result.totals_where(|i| i % urls.len() == u);
            json!({"url": urls[u], "clients": n, "lost": c.lost, "gap": c.gap, "dup": c.dup, "ooo": c.ooo,
                   "reconnects": c.reconnects, "not_converged": nc})
        })
        .collect();
    let t = &result.totals;
    Ok(json!({
        "label": args.label, "scenario": "verify", "path": path.as_str(),
        "transport": args.transport.as_str(), "via": format!("{:?}", args.via()).to_lowercase(),
        "urls": urls, "conns": plan.conns, "vendors": plan.vendors, "rate": rate,
        "published": total, "publish_errors": publish_errors, "publish_s": round3(publish_s),
        "run_start_ms": ms(run_start_ns),
        "subscribed": subscribed, "connected_at_end": connected_at_end,
        "converge_ms": converge_ms,
        "totals": {
            "delivered": t.delivered, "snapshots": t.snapshots, "lost": t.lost, "gap": t.gap,
            "dup": t.dup, "ooo": t.ooo, "foreign": t.foreign, "reconnects": t.reconnects,
            "unparsed": result.unparsed, "overflowed": result.overflowed, "unjudged": result.unjudged,
            "converged": result.converged, "not_converged": result.verdicts.len() - result.converged,
        },
        "per_url": per_url,
        "clients": clients,
        "errors": live.errors(),
        "ok": ok, "fail_reasons": reasons,
        "run_s": round3(t_run.elapsed().as_secs_f64()),
    }))
}

/// Every client's verdict and the run's totals.
struct Judged {
    /// `None`: the client's task did not return its history in time.
    verdicts: Vec<Option<ClientVerdict>>,
    totals: Counts,
    converged: usize,
    unparsed: u64,
    overflowed: usize,
    unjudged: usize,
}

impl Judged {
    fn new(histories: &[Option<History>], log: &PubLog, plan: &Plan) -> Self {
        let mut me = Self {
            verdicts: Vec::with_capacity(histories.len()),
            totals: Counts::default(),
            converged: 0,
            unparsed: 0,
            overflowed: 0,
            unjudged: 0,
        };
        for (i, h) in histories.iter().enumerate() {
            let Some(h) = h.as_ref().filter(|h| !h.overflow) else {
                if h.as_ref().is_some_and(|h| h.overflow) {
                    me.overflowed += 1;
                } else {
                    me.unjudged += 1;
                }
                me.verdicts.push(None);
                continue;
            };
            me.unparsed += h.unparsed;
            let v = check::judge(&h.recs, &log[i % plan.vendors]);
            me.totals.add(&v.counts);
            me.converged += usize::from(v.converged);
            me.verdicts.push(Some(v));
        }
        me
    }

    /// Totals, client count and non-converged count of the clients `pick`ed.
    fn totals_where(&self, pick: impl Fn(usize) -> bool) -> (Counts, usize, usize) {
        let mut c = Counts::default();
        let (mut n, mut nc) = (0, 0);
        for (_, v) in self.verdicts.iter().enumerate().filter(|(i, _)| pick(*i)) {
            n += 1;
            match v {
                Some(v) => {
                    c.add(&v.counts);
                    nc += usize::from(!v.converged);
                }
                None => nc += 1,
            }
        }
        (c, n, nc)
    }

    /// Why the run fails `path`'s promise (empty: it holds).
    fn reasons(&self, path: Path) -> Vec<String> {
        let t = &self.totals;
        let mut r = Vec::new();
        let not_converged = self.verdicts.len() - self.converged;
        if not_converged > 0 {
            r.push(format!("{not_converged} clients did not converge on the last value published"));
        }
        if path == Path::Lossless && t.lost > 0 {
            r.push(format!("{} updates lost while connected", t.lost));
        }
        if path != Path::Datagram && t.dup > 0 {
            r.push(format!("{} duplicates", t.dup));
        }
        if path != Path::Datagram && t.ooo > 0 {
            r.push(format!("{} out of order", t.ooo));
        }
        if t.foreign > 0 {
            r.push(format!("{} live updates this run did not publish", t.foreign));
        }
        if self.overflowed > 0 {
            r.push(format!("{} clients' records overflowed", self.overflowed));
        }
        if self.unjudged > 0 {
            r.push(format!("{} clients did not stop in time to be judged", self.unjudged));
        }
        r
    }

    /// The human summary, on stderr.
    fn summary(&self, path: Path, ok: bool, reasons: &[String]) {
        let t = &self.totals;
        eprintln!(
            "[verify] {} path: {} clients, delivered {}, lost while connected {}, gap (disconnected) {}, \
             duplicated {}, out of order {}, reconnects {}, converged {}/{}",
            path.as_str(),
            self.verdicts.len(),
            t.delivered,
            t.lost,
            t.gap,
            t.dup,
            t.ooo,
            t.reconnects,
            self.converged,
            self.verdicts.len()
        );
        if ok {
            eprintln!("[verify] OK: the {} path kept its promise", path.as_str());
        } else {
            eprintln!("[verify] FAILED: {}", reasons.join("; "));
        }
    }
}
