//! The run, phase by phase: connect, settle, readiness probe, publishing
//! steps (with stop conditions), and the final result.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::args::{BenchArgs, ClientTransport, Plan};
use super::connect::{ConnectPlan, connect_all};
use super::publisher::Publisher;
use super::report::{Progress, Verdict, latency_json, step_summary};
use super::stats::{Stats, ms_at, round3};
use super::sys;
use super::transport::{Connector, Target};

/// Bench CPU (percent of one thread) from which a step is flagged as
/// measuring the bench rather than the gateway.
const BENCH_SATURATED_PCT: f64 = 90.0;

/// Everything the phases share.
pub struct Run<'a> {
    pub args: &'a BenchArgs,
    pub plan: &'a Plan,
    pub stats: Arc<Stats>,
    pub publisher: Publisher,
    /// `userId` of client i.
    pub user: &'a (dyn Fn(usize) -> String + Sync),
}

/// Drives the whole run over `connector`'s transport; returns the result.
pub async fn drive<C: Connector>(r: Run<'_>, connector: Arc<C>) -> Value {
    let (args, plan, st) = (r.args, r.plan, &r.stats);
    let pid = args.pid;
    let progress = Progress::start(Arc::clone(st), Arc::clone(r.publisher.stats()), plan.conns, pid);
    let load_start = sys::loadavg();
    let t_run = Instant::now();
    let rss_idle = sys::rss_kib(pid);
    let me = std::process::id();
    let (srv_wait0, me_wait0) = (pid.and_then(sys::sched_wait_ns), sys::sched_wait_ns(me));

    // Connect.
    progress.phase(format!("connect at {}/s, {} in flight", plan.connect_rate, plan.connect_concurrency));
    let cpu0 = sys::cpu_ticks(pid);
    let target = |i: usize| {
        let v = i % plan.vendors;
        Target {
            vendor_index: u32::try_from(v).unwrap_or(u32::MAX),
            vendor: format!("{}{v}", args.vendor_prefix),
            user: (r.user)(i),
            src: (!args.src_ips.is_empty()).then(|| args.src_ips[i % args.src_ips.len()]),
        }
    };
    let cp = ConnectPlan {
        conns: plan.conns,
        rate: plan.connect_rate,
        concurrency: plan.connect_concurrency,
        timeout: Duration::from_millis(args.connect_timeout_ms),
    };
    let connect_s = connect_all(connector, &cp, target, st).await;
    let connect_cpu = sys::cpu_pct(cpu0, sys::cpu_ticks(pid), connect_s);
    let connected = st.connected.load(Relaxed);
    let failed = st.failed.load(Relaxed);
    eprintln!("[bench] connected {connected}/{}, failed {failed}, in {connect_s:.2} s", plan.conns);
    if failed > 0 {
        eprintln!("[bench] connect errors: {:?}", st.errors());
    }
    let connect_errors = st.errors();
    progress.phase(format!("settle {} ms", plan.settle_ms));
    tokio::time::sleep(Duration::from_millis(plan.settle_ms)).await;
    let rss_connected = sys::rss_kib(pid);

    // Readiness probe: proves every subscription delivers, end to end.
    let mut seq = vec![0u64; plan.vendors];
    st.begin_phase(0);
    r.publisher.begin_step();
    let t_ready = Instant::now();
    if !args.no_ready_probe && connected > 0 {
        progress.phase("readiness probe (one update per vendor every 500 ms)");
        let timeout = Duration::from_millis(args.ready_timeout_ms);
        let all_ready = || st.ready.load(Relaxed) >= st.connected.load(Relaxed);
        while !all_ready() && t_ready.elapsed() < timeout {
            for (v, n) in seq.iter_mut().enumerate() {
                if st.subs_per_vendor[v].load(Relaxed) > 0 {
                    r.publisher.publish(v, *n, 0).await;
                    *n += 1;
                }
            }
            r.publisher.flush().await;
            let round = Instant::now();
            while !all_ready() && round.elapsed() < Duration::from_millis(500) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        // Let the last round land before the first step starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ready = st.ready.load(Relaxed);
    let ready_ms = t_ready.elapsed().as_millis();
    let rss_ready = sys::rss_kib(pid);
    eprintln!("[bench] ready {ready}/{} after {ready_ms} ms", st.connected.load(Relaxed));

    // Steps.
    let mut steps = Vec::new();
    let mut max_ok: Option<(f64, f64)> = None;
    let mut broke: Option<String> = None;
    let (mut phase, mut attempt, mut i) = (0u32, 0u32, 0usize);
    if connected == 0 && !plan.rates.is_empty() {
        broke = Some("no client connected: see connect_errors".into());
        i = plan.rates.len();
    }
    while i < plan.rates.len() {
        let rate = plan.rates[i];
        phase += 1;
        st.begin_phase(phase);
        r.publisher.begin_step();
        progress.phase(format!("step {}/{} at {rate} updates/s (attempt {})", i + 1, plan.rates.len(), attempt + 1));
        let step = run_step(&r, rate, &mut seq, phase, attempt + 1).await;
        eprintln!("{}", step_summary(&step));
        let ok = step["ok"] == true;
        let why = step["fail_reason"].as_str().unwrap_or_default().to_owned();
        let dropped = step["conns_dropped"].as_u64().unwrap_or(0);
        let dps = step["deliveries_per_s"].as_f64().unwrap_or(0.0);
        steps.push(step);
        if ok {
            max_ok = Some((rate, dps));
            attempt = 0;
            i += 1;
        } else if attempt < args.step_retries && dropped == 0 {
            attempt += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
        } else {
            broke = Some(format!("rate {rate}: {why}"));
            break;
        }
    }
    if plan.hold_ms > 0 {
        progress.phase(format!("hold {} ms", plan.hold_ms));
        tokio::time::sleep(Duration::from_millis(plan.hold_ms)).await;
    }
    let rss_end = sys::rss_kib(pid);
    progress.phase("done");

    let ch = st.connect_histogram();
    let per_conn = |rss: Option<u64>| {
        rss.zip(rss_idle)
            .filter(|_| connected > 0)
            .map(|(a, b)| ((a as f64 - b as f64) / connected as f64 * 100.0).round() / 100.0)
    };
    let all_connected = connected == plan.conns && st.dropped.load(Relaxed) == 0;
    let all_ready = args.no_ready_probe || ready == connected;
    json!({
        "label": args.label,
        "scenario": args.scenario.map(|s| format!("{s:?}").to_lowercase()),
        "transport": args.transport.as_str(), "url": args.session_url(), "via": format!("{:?}", args.via()).to_lowercase(),
        "wt_delivery": (args.transport == ClientTransport::Webtransport).then(|| format!("{:?}", args.wt_delivery).to_lowercase()),
        "conns": plan.conns, "vendors": plan.vendors,
        "connected": connected, "connect_failed": failed, "connect_errors": connect_errors,
        "connect_s": round3(connect_s),
        "connect_rate": if connect_s > 0.0 { (connected as f64 / connect_s).round() } else { 0.0 },
        "connect_ms": {"p50": ms_at(&ch, 0.5), "p99": ms_at(&ch, 0.99), "max": round3(ch.max() as f64 / 1000.0)},
        "server_cpu_pct_connect": connect_cpu,
        "ready": ready, "ready_ms": ready_ms,
        "rss_kib": {"idle": rss_idle, "connected": rss_connected, "ready": rss_ready, "end": rss_end,
                    "peak": pid.map(|_| progress.peak_rss.load(Relaxed))},
        "rss_per_conn_kib": per_conn(rss_connected), "rss_per_conn_ready_kib": per_conn(rss_ready),
        "steps": steps,
        "max_ok_rate": max_ok.map(|m| m.0), "max_ok_deliveries_per_s": max_ok.map(|m| m.1),
        "broke": broke,
        "ok": all_connected && all_ready && broke.is_none(),
        "conns_dropped_total": st.dropped.load(Relaxed),
        "errors": st.errors(),
        "publish_errors": r.publisher.stats().errors_by_message(),
        "run_s": round3(t_run.elapsed().as_secs_f64()),
        "sched_wait_pct": {
            "server": sys::wait_pct(srv_wait0, pid.and_then(sys::sched_wait_ns), t_run.elapsed().as_secs_f64()),
            "bench": sys::wait_pct(me_wait0, sys::sched_wait_ns(me), t_run.elapsed().as_secs_f64()),
        },
        "loadavg": {"start": load_start, "end": sys::loadavg()},
    })
}

/// One publishing step (counters already reset for `phase`): paced
/// publishing for `--duration`, then a drain for late deliveries; returns
/// the step's JSON.
async fn run_step(r: &Run<'_>, rate: f64, seq: &mut [u64], phase: u32, attempt: u32) -> Value {
    let (args, plan, st) = (r.args, r.plan, &r.stats);
    let dropped0 = st.dropped.load(Relaxed);
    let (srv0, me0) = (sys::cpu_ticks(args.pid), sys::self_ticks());
    let me = std::process::id();
    let (srv_wait0, me_wait0) = (args.pid.and_then(sys::sched_wait_ns), sys::sched_wait_ns(me));
    let duration = Duration::from_secs_f64(plan.duration);
    let t0 = Instant::now();
    let sent = r.publisher.paced(rate, duration, seq, phase).await;
    r.publisher.flush().await;
    tokio::time::sleep(duration.saturating_sub(t0.elapsed())).await;
    let window_s = t0.elapsed().as_secs_f64();
    st.end_window();
    let (srv1, me1) = (sys::cpu_ticks(args.pid), sys::self_ticks());
    let (srv_wait1, me_wait1) = (args.pid.and_then(sys::sched_wait_ns), sys::sched_wait_ns(me));

    let pubs = r.publisher.stats();
    let expected = pubs.expected.load(Relaxed);
    let drain = Instant::now();
    let mut last = (st.received(), Instant::now());
    while st.received() < expected && drain.elapsed() < Duration::from_millis(plan.drain_ms) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = st.received();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(1500) {
            break; // no progress: what is missing is lost
        }
    }
    let drain_ms = drain.elapsed().as_millis();
    let c = st.snapshot();
    let lat = st.latency();
    let published = pubs.published.load(Relaxed);
    let publish_errors = pubs.errors.load(Relaxed);
    let lost = expected.saturating_sub(c.received);
    let dropped = st.dropped.load(Relaxed).saturating_sub(dropped0);
    let p99 = ms_at(&lat, 0.99);
    let bench_cpu = sys::cpu_pct(me0, me1, window_s);

    let mut verdict = Verdict::default();
    if let Some(limit) = plan.stop_p99_ms {
        verdict.check(p99 > limit, || format!("p99 {p99} ms > {limit} ms"));
    }
    verdict.check(lost > 0 && !args.no_stop_on_loss, || format!("lost {lost} of {expected}"));
    verdict.check(c.dup > 0, || format!("{} duplicates", c.dup));
    verdict.check(dropped > 0, || format!("{dropped} connections dropped"));
    verdict.check(publish_errors > 0, || format!("{publish_errors} publishes failed"));
    verdict.check(c.received == 0, || "nothing received".into());
    json!({
        "rate": rate, "attempt": attempt, "window_s": round3(window_s),
        "sent": sent, "published": published, "publish_errors": publish_errors,
        "publish_rate": (published as f64 / window_s * 10.0).round() / 10.0,
        "expected": expected, "received": c.received, "lost": lost, "dup": c.dup,
        "deliveries_per_s": (c.in_window as f64 / window_s).round(),
        "lat_ms": latency_json(&lat),
        "stale": c.stale, "wrong_vendor": c.wrong_vendor, "snapshots": c.snapshots, "unparsed": c.unparsed,
        "server_cpu_pct": sys::cpu_pct(srv0, srv1, window_s),
        "bench_cpu_pct": bench_cpu,
        // A saturated bench reads late, which lets the gateway batch its
        // writes: the step then measures the bench, not the gateway.
        "bench_saturated": bench_cpu.is_some_and(|c| c >= BENCH_SATURATED_PCT * f64::from(args.threads)),
        // Time runnable but kept off a CPU: high values mean other load on
        // the machine distorted this step.
        "sched_wait_pct": {"server": sys::wait_pct(srv_wait0, srv_wait1, window_s),
                           "bench": sys::wait_pct(me_wait0, me_wait1, window_s)},
        "drain_ms": drain_ms, "conns_dropped": dropped,
        "rss_kib": sys::rss_kib(args.pid),
        "ok": verdict.ok(), "fail_reason": verdict.reason(),
    })
}
