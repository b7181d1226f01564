//! `--scenario s4`: area subscriptions ("vendors near me") under load, and
//! whether every client ends up seeing what is really inside its area.
//!
//! One run, phase by phase, publishing the same random walk throughout
//! (positions are real coordinates here, so latency comes from each update's
//! `timestamp` rather than the marker in `lat`/`long`):
//!
//! 1. place: every vendor gets a first position (the truth starts complete).
//! 2. baseline: the walk with no client connected: what ingest and the geo
//!    index cost the gateway by themselves.
//! 3. location: `--location-conns` per-vendor clients (`subscribe_location`),
//!    the walk for `--duration`; then they close.
//! 4. area: `--conns` clients each holding one box, `--pan-fraction` of them
//!    panning every `--pan-every-ms`; the walk for `--duration`.
//! 5. convergence: publishing stops; once no area message arrived for 1 s
//!    (at most `--drain-ms`), every client's view (snapshot + entered − left)
//!    is compared with the vendors inside its current box by the positions
//!    last published.
//!
//! CPU per delivery is the gateway's CPU over a window divided by what was
//! delivered in it, gross and above the baseline (the baseline's CPU rate
//! removed), so areas and per-vendor subscriptions can be compared in one run.

mod city;
mod client;
mod tally;

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::args::{BenchArgs, Plan};
use super::publisher::Publisher;
use super::report::latency_json;
use super::stats::{Stats, ms_at, round3};
use super::sys;
use super::ws::WsConnector;
use city::{City, Pos, Rect, Rng};
use client::{Cmd, Ctx, Report};
use tally::{Counts, Lat, Tally};

/// Bench CPU (percent of one thread) from which a phase is flagged as
/// measuring the bench rather than the gateway.
const BENCH_SATURATED_PCT: f64 = 90.0;
/// Clock ticks per second (USER_HZ).
const TICK_HZ: f64 = 100.0;
/// Quiet time after which the area messages are taken as settled.
const QUIET: Duration = Duration::from_secs(1);
/// Mismatched clients described in the result, for a reproduction.
const EXAMPLES: usize = 5;
/// The longest second settle, when the first check did not converge.
const LATE_SETTLE: Duration = Duration::from_secs(30);

/// The walk, the boxes and what was published: the generator's truth.
struct World {
    city: City,
    rng: Rng,
    /// Last position published per vendor.
    positions: Vec<Option<Pos>>,
    /// Each area client's box as last sent (its acknowledged box is in its report).
    rects: Vec<Rect>,
    cursor: usize,
    /// Per-vendor followers (while the location clients are connected).
    followers: Vec<u64>,
    /// Per-vendor deliveries owed since the last reset.
    expected_location: u64,
    panners: usize,
    pan_cursor: usize,
    pan_every: Duration,
    edge_fraction: f64,
    /// Updates put exactly on some box's edge.
    edge_updates: u64,
}

impl World {
    /// Moves the next vendor (round-robin) and publishes its position.
    async fn step(&mut self, publisher: &Publisher) {
        let n = self.positions.len();
        let v = self.cursor % n;
        self.cursor += 1;
        let next = match self.positions[v] {
            _ if !self.rects.is_empty() && self.rng.unit() < self.edge_fraction => {
                self.edge_updates += 1;
                let r = self.rects[self.rng.below(self.rects.len())];
                self.city.onto_edge(r, &mut self.rng)
            }
            Some(p) => self.city.step(p, &mut self.rng),
            None => self.city.random_pos(&mut self.rng),
        };
        self.positions[v] = Some(next);
        self.expected_location += self.followers[v];
        let (lat, long) = next.degrees();
        publisher.publish_at(v, lat, long).await;
    }

    /// Pans the next panning client (if its queue has room).
    fn pan(&mut self, clients: &[mpsc::Sender<Cmd>]) {
        if self.panners == 0 {
            return;
        }
        let j = self.pan_cursor % self.panners;
        self.pan_cursor += 1;
        let (Some(tx), Some(r)) = (clients.get(j), self.rects.get(j).copied()) else { return };
        let next = self.city.pan(r, &mut self.rng);
        if tx.try_send(Cmd::Pan(next)).is_ok() {
            self.rects[j] = next;
        }
    }

    /// Publishes `rate × duration` steps evenly over `duration`, panning
    /// `clients` on their schedule meanwhile. Returns the steps published.
    async fn walk(
        &mut self,
        publisher: &Publisher,
        rate: f64,
        duration: Duration,
        clients: &[mpsc::Sender<Cmd>],
    ) -> u64 {
        let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        let t0 = Instant::now();
        let pan_every = (!clients.is_empty() && self.panners > 0)
            .then(|| (self.pan_every / u32::try_from(self.panners).unwrap_or(u32::MAX)).max(Duration::from_millis(1)));
        let mut next_pan = pan_every.map(|p| t0 + p);
        let mut sent = 0u64;
        while sent < total {
            let due = ((t0.elapsed().as_secs_f64() * rate) as u64 + 1).min(total);
            while sent < due {
                self.step(publisher).await;
                sent += 1;
            }
            if let (Some(every), Some(at)) = (pan_every, next_pan.as_mut()) {
                let mut burst = 0;
                while Instant::now() >= *at && burst < 1000 {
                    self.pan(clients);
                    *at += every;
                    burst += 1;
                }
            }
            if sent < total {
                let next_step = t0 + Duration::from_secs_f64(sent as f64 / rate);
                let wake = next_pan.map_or(next_step, |p| p.min(next_step));
                tokio::time::sleep_until(wake.into()).await;
            }
        }
        sent
    }
}

/// A sample at one end of a measured window.
struct Probe {
    t: Instant,
    srv: Option<u64>,
    me: Option<u64>,
    srv_wait: Option<u64>,
    me_wait: Option<u64>,
    counts: Counts,
}

fn probe(pid: Option<u32>, tally: &Tally) -> Probe {
    Probe {
        t: Instant::now(),
        srv: sys::cpu_ticks(pid),
        me: sys::self_ticks(),
        srv_wait: pid.and_then(sys::sched_wait_ns),
        me_wait: sys::sched_wait_ns(std::process::id()),
        counts: tally.c.get(),
    }
}

/// The figures of one measured window.
struct Window {
    name: &'static str,
    secs: f64,
    published: u64,
    /// Gateway CPU seconds in the window.
    cpu_s: Option<f64>,
    bench_cpu_pct: Option<f64>,
    srv_wait_pct: Option<f64>,
    me_wait_pct: Option<f64>,
    counts: Counts,
}

impl Window {
    fn between(name: &'static str, a: &Probe, b: &Probe, published: u64) -> Self {
        let secs = b.t.duration_since(a.t).as_secs_f64();
        Self {
            name,
            secs,
            published,
            cpu_s: a.srv.zip(b.srv).map(|(x, y)| y.saturating_sub(x) as f64 / TICK_HZ),
            bench_cpu_pct: sys::cpu_pct(a.me, b.me, secs),
            srv_wait_pct: sys::wait_pct(a.srv_wait, b.srv_wait, secs),
            me_wait_pct: sys::wait_pct(a.me_wait, b.me_wait, secs),
            counts: b.counts.since(&a.counts),
        }
    }

    fn cpu_pct(&self) -> Option<f64> {
        self.cpu_s.map(|c| round1(c / self.secs * 100.0))
    }

    /// Gateway CPU µs per delivery: gross, and above `baseline` (its CPU
    /// rate over this window's length taken off).
    fn us_per(&self, deliveries: u64, baseline: Option<&Window>) -> (Option<f64>, Option<f64>) {
        if deliveries == 0 {
            return (None, None);
        }
        let gross = self.cpu_s.map(|c| round3(c * 1e6 / deliveries as f64));
        let above = baseline
            .and_then(|b| b.cpu_s.map(|bc| bc / b.secs))
            .zip(self.cpu_s)
            .map(|(rate, c)| round3((c - rate * self.secs).max(0.0) * 1e6 / deliveries as f64));
        (gross, above)
    }

    fn json(&self, threads: u16) -> Value {
        json!({
            "name": self.name, "window_s": round3(self.secs), "published": self.published,
            "publish_rate": round1(self.published as f64 / self.secs),
            "server_cpu_pct": self.cpu_pct(), "bench_cpu_pct": self.bench_cpu_pct,
            "bench_saturated": self.bench_cpu_pct.is_some_and(|c| c >= BENCH_SATURATED_PCT * f64::from(threads)),
            "sched_wait_pct": {"server": self.srv_wait_pct, "bench": self.me_wait_pct},
            "counts": self.counts.json(),
        })
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The progress line, every second.
fn start_progress(
    phase: Arc<Mutex<String>>,
    tally: Arc<Tally>,
    publisher: Arc<super::publisher::PubStats>,
    pid: Option<u32>,
) {
    let started = Instant::now();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.tick().await;
        loop {
            every.tick().await;
            let c = tally.c.get();
            let rss =
                sys::rss_kib(pid).map(|k| format!(", server rss {:.1} MiB", k as f64 / 1024.0)).unwrap_or_default();
            eprintln!(
                "[bench s4 {:>6.1}s] {} | area conns {} location conns {} failed {} dropped {} | published {} \
                 | area deliveries {} (entered {} moved {} left {} pan {}/{}) pans {}/{} | location {} | violations {}{rss}",
                started.elapsed().as_secs_f64(),
                phase.lock(),
                c.area_connected,
                c.location_connected,
                c.connect_failed,
                c.dropped,
                publisher.published.load(std::sync::atomic::Ordering::Relaxed),
                c.area_deliveries(),
                c.entered,
                c.moved,
                c.left_moved + c.left_expired,
                c.pan_entered,
                c.pan_left,
                c.pans_acked,
                c.pans_sent,
                c.location,
                c.violations,
            );
        }
    });
}

/// Runs the scenario; the result is one JSON object.
pub async fn run(args: &BenchArgs, plan: &Plan) -> anyhow::Result<Value> {
    let g = &args.geo;
    let most = plan.conns.max(g.location_conns);
    let nofile = sys::ensure_nofile(most)?;
    let rate = plan.rates.first().copied().unwrap_or(2000.0);
    eprintln!(
        "[bench] s4: {} vendors walking in a {} km city at {rate} updates/s via {}; {} area clients ({} km boxes, {:.0} % panning {} km every {} ms), {} per-vendor clients following {} each; {} s per phase; RLIMIT_NOFILE {nofile}",
        plan.vendors,
        g.city_km,
        format!("{:?}", args.via()).to_lowercase(),
        plan.conns,
        g.area_km,
        g.pan_fraction * 100.0,
        g.pan_km,
        g.pan_every_ms,
        g.location_conns,
        g.follow,
        plan.duration,
    );
    if let Some(w) = sys::ephemeral_port_warning(most, args.src_ips.len()) {
        eprintln!("[bench] warning: {w}");
    }
    for note in super::capacity_notes(most, args.jwt.is_some()) {
        eprintln!("[bench] note: {note}");
    }
    let fixed_user = match &args.jwt {
        Some(t) => Some(super::token_sub(t)?),
        None => args.user.clone(),
    };
    let user = |i: usize| fixed_user.clone().unwrap_or_else(|| format!("u{i}"));
    let connector = Arc::new(WsConnector::new(&args.session_url(), args.jwt.as_deref(), &args.vendor_prefix).await?);
    let vendors: Vec<String> = (0..plan.vendors).map(|v| format!("{}{v}", args.vendor_prefix)).collect();
    let publisher = Publisher::connect(args, vendors, Arc::new(Stats::new(plan.vendors))).await?;
    let tally = Arc::new(Tally::default());
    let ctx = Arc::new(Ctx {
        connector,
        tally: Arc::clone(&tally),
        vendor_prefix: args.vendor_prefix.clone(),
        sem: Arc::new(Semaphore::new(plan.connect_concurrency.max(1))),
        timeout: Duration::from_millis(args.connect_timeout_ms),
        src: args.src_ips.clone(),
    });
    let pid = args.pid;
    let phase = Arc::new(Mutex::new("starting".to_owned()));
    start_progress(Arc::clone(&phase), Arc::clone(&tally), Arc::clone(publisher.stats()), pid);
    let set_phase = |p: String| {
        eprintln!("[bench] s4: {p}");
        *phase.lock() = p;
    };
    let t_run = Instant::now();
    let load_start = sys::loadavg();
    let rss_idle = sys::rss_kib(pid);
    let city = City::new(g.city_km, g.area_km, g.pan_km, g.step_m);
    let mut rng = Rng::new(g.seed);
    let rects: Vec<Rect> = (0..plan.conns).map(|_| city.random_box(&mut rng)).collect();
    let mut world = World {
        city,
        rng,
        positions: vec![None; plan.vendors],
        rects: Vec::new(),
        cursor: 0,
        followers: vec![0; plan.vendors],
        expected_location: 0,
        panners: ((plan.conns as f64) * g.pan_fraction).round() as usize,
        pan_cursor: 0,
        pan_every: Duration::from_millis(g.pan_every_ms),
        edge_fraction: g.edge_fraction,
        edge_updates: 0,
    };
    let duration = Duration::from_secs_f64(plan.duration);
    let settle = Duration::from_millis(plan.settle_ms);
    let mut phases = Vec::new();

    // 1. Every vendor gets a position.
    set_phase(format!("placing {} vendors", plan.vendors));
    let place_rate = (rate * 2.0).max(1000.0);
    world.walk(&publisher, place_rate, Duration::from_secs_f64(plan.vendors as f64 / place_rate), &[]).await;
    publisher.flush().await;
    let placed_errors = publisher.stats().errors.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(settle).await;

    // 2. Baseline.
    let baseline = if g.no_baseline {
        None
    } else {
        set_phase(format!("baseline: {rate} updates/s for {} s, no client", plan.duration));
        publisher.begin_step();
        let a = probe(pid, &tally);
        world.walk(&publisher, rate, duration, &[]).await;
        publisher.flush().await;
        let b = probe(pid, &tally);
        let w = Window::between("baseline", &a, &b, published(&publisher));
        phases.push(w.json(args.threads));
        Some(w)
    };

    // 3. Per-vendor clients.
    let mut location = None;
    if g.location_conns > 0 {
        set_phase(format!("connecting {} per-vendor clients ({} vendors each)", g.location_conns, g.follow));
        let k = usize::from(g.follow);
        let mut stops = Vec::with_capacity(g.location_conns);
        let before = tally.c.get();
        let t0 = Instant::now();
        for i in 0..g.location_conns {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / plan.connect_rate)).into()).await;
            let followed: Vec<u32> = (0..k).map(|j| u32::try_from((i * k + j) % plan.vendors).unwrap_or(0)).collect();
            for v in &followed {
                world.followers[*v as usize] += 1;
            }
            let (tx, rx) = mpsc::channel(1);
            stops.push(tx);
            tokio::spawn(client::location_client(Arc::clone(&ctx), i, user(i), followed, rx));
        }
        let connect_s =
            wait_connected(t0, &tally, &before, g.location_conns, plan, args, |c| c.location_connected).await;
        let c = tally.c.get().since(&before);
        eprintln!(
            "[bench] s4: per-vendor clients connected {}/{} (failed {}) in {connect_s:.2} s",
            c.location_connected, g.location_conns, c.connect_failed
        );
        tokio::time::sleep(settle).await;
        set_phase(format!(
            "location: {rate} updates/s for {} s, {} per-vendor clients",
            plan.duration, c.location_connected
        ));
        publisher.begin_step();
        tally.reset_latency();
        world.expected_location = 0;
        let a = probe(pid, &tally);
        world.walk(&publisher, rate, duration, &[]).await;
        publisher.flush().await;
        let b = probe(pid, &tally);
        let w = Window::between("location", &a, &b, published(&publisher));
        let expected = world.expected_location;
        let drain_ms = drain(&tally, &a.counts, expected, plan.drain_ms).await;
        let received = tally.c.get().since(&a.counts).location;
        let (gross, above) = w.us_per(w.counts.location, baseline.as_ref());
        let mut j = w.json(args.threads);
        j["deliveries"] = json!(w.counts.location);
        j["deliveries_per_s"] = json!((w.counts.location as f64 / w.secs).round());
        j["expected"] = json!(expected);
        j["received"] = json!(received);
        j["lost"] = json!(expected.saturating_sub(received));
        j["dup"] = json!(w.counts.location_dup);
        j["drain_ms"] = json!(drain_ms);
        j["lat_ms"] = latency_json(&tally.histogram(Lat::Location));
        j["server_cpu_us_per_delivery"] = json!(gross);
        j["server_cpu_us_per_delivery_above_baseline"] = json!(above);
        j["connected"] = json!(c.location_connected);
        j["connect_s"] = json!(round3(connect_s));
        phases.push(j);
        location = Some((gross, above, c.location_connected));
        set_phase("closing the per-vendor clients".into());
        drop(stops);
        world.followers.iter_mut().for_each(|f| *f = 0);
        tokio::time::sleep(settle.max(Duration::from_secs(1))).await;
    }

    // 4. Area clients.
    set_phase(format!("connecting {} area clients", plan.conns));
    let before = tally.c.get();
    let mut clients = Vec::with_capacity(plan.conns);
    let t0 = Instant::now();
    for (i, r) in rects.iter().enumerate() {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / plan.connect_rate)).into()).await;
        let (tx, rx) = mpsc::channel(4);
        clients.push(tx);
        tokio::spawn(client::area_client(Arc::clone(&ctx), i, user(i), *r, rx));
    }
    world.rects = rects;
    let connect_s = wait_connected(t0, &tally, &before, plan.conns, plan, args, |c| c.area_connected).await;
    let conn_counts = tally.c.get().since(&before);
    let area_connected = conn_counts.area_connected;
    eprintln!(
        "[bench] s4: area clients connected {area_connected}/{} (failed {}) in {connect_s:.2} s; snapshots listed {} vendors ({:.1} per area)",
        plan.conns,
        conn_counts.connect_failed,
        conn_counts.snapshot_vendors,
        conn_counts.snapshot_vendors as f64 / area_connected.max(1) as f64
    );
    tokio::time::sleep(settle).await;
    let rss_connected = sys::rss_kib(pid);
    set_phase(format!(
        "area: {rate} updates/s for {} s, {area_connected} area clients, {} panning",
        plan.duration, world.panners
    ));
    publisher.begin_step();
    tally.reset_latency();
    let edge0 = world.edge_updates;
    let a = probe(pid, &tally);
    world.walk(&publisher, rate, duration, &clients).await;
    publisher.flush().await;
    let b = probe(pid, &tally);
    let w = Window::between("area", &a, &b, published(&publisher));
    let area_deliveries = w.counts.area_deliveries();
    let (area_gross, area_above) = w.us_per(area_deliveries, baseline.as_ref());
    let mut area_json = w.json(args.threads);
    area_json["deliveries"] = json!(area_deliveries);
    area_json["deliveries_per_s"] = json!((area_deliveries as f64 / w.secs).round());
    area_json["lat_ms"] = json!({
        "location_updated": latency_json(&tally.histogram(Lat::Moved)),
        "vendor_entered": latency_json(&tally.histogram(Lat::Entered)),
    });
    area_json["server_cpu_us_per_delivery"] = json!(area_gross);
    area_json["server_cpu_us_per_delivery_above_baseline"] = json!(area_above);
    area_json["connected"] = json!(area_connected);
    area_json["connect_s"] = json!(round3(connect_s));
    area_json["edge_updates"] = json!(world.edge_updates - edge0);
    let moved_p99 = ms_at(&tally.histogram(Lat::Moved), 0.99);
    let entered_p99 = ms_at(&tally.histogram(Lat::Entered), 0.99);
    phases.push(area_json);

    // 5. Convergence: at the settle the brief sets (quiet for 1 s, at most
    // --drain-ms), and, if that did not converge, once more after a longer
    // quiet wait (a backlog drains; a lost update stays lost).
    set_phase(format!("settling (no area message for 1 s, at most {} ms)", plan.drain_ms));
    let settle_ms = settle_area(&tally, Duration::from_millis(plan.drain_ms)).await;
    set_phase(format!("checking convergence of {area_connected} areas"));
    let convergence = converge(&clients, &world.positions).await;
    let late = if convergence["clients_mismatched"] == 0 {
        None
    } else {
        set_phase(format!("not converged: settling again (quiet 1 s, at most {} ms)", LATE_SETTLE.as_millis()));
        let ms = settle_area(&tally, LATE_SETTLE).await;
        let c = converge(&clients, &world.positions).await;
        eprintln!(
            "[bench] s4: after {} ms more: {} of {} areas mismatched ({} vendors)",
            ms, c["clients_mismatched"], c["clients_checked"], c["vendors_mismatched"]
        );
        Some(json!({"settle_ms": ms, "details": c}))
    };
    let gateway_metrics = area_metrics(&args.to.http_url()).await;
    let rss_end = sys::rss_kib(pid);
    set_phase("done".into());

    let c = tally.c.get();
    let publish_errors = publisher.stats().errors_by_message();
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| round3(a / b));
    let comparison = location.map(|(loc_gross, loc_above, _)| {
        json!({
            "area_us_per_delivery": area_gross, "location_us_per_delivery": loc_gross,
            "ratio": ratio(area_gross, loc_gross),
            "area_us_per_delivery_above_baseline": area_above, "location_us_per_delivery_above_baseline": loc_above,
            "ratio_above_baseline": ratio(area_above, loc_above),
        })
    });
    let converged = convergence["clients_mismatched"] == 0 && convergence["unanswered"] == 0;
    let all_connected = area_connected == plan.conns as u64
        && location.is_none_or(|(_, _, n)| n == g.location_conns as u64)
        && c.dropped == 0;
    let mut problems = Vec::new();
    if !all_connected {
        problems.push("not every client connected and stayed".to_owned());
    }
    if !converged {
        problems.push(format!("{} areas did not converge", convergence["clients_mismatched"]));
    }
    if c.violations > 0 {
        problems.push(format!("{} area events broke the contract", c.violations));
    }
    if !publish_errors.is_empty() || placed_errors > 0 {
        problems.push("publishes failed (the truth may be wrong)".into());
    }
    if area_deliveries == 0 {
        problems.push("no area delivery".into());
    }
    let summary = format!(
        "[bench] s4: area {} deliveries/s, location_updated p50 {} p99 {moved_p99} ms, vendor_entered p99 {entered_p99} ms, \
         {} µs gateway CPU per area delivery vs {} per per-vendor delivery (ratio {}; above baseline {} vs {}, ratio {}); \
         convergence: {} of {} areas mismatched ({} vendors) → {}",
        phases.last().map_or(Value::Null, |p| p["deliveries_per_s"].clone()),
        ms_at(&tally.histogram(Lat::Moved), 0.5),
        fmt_opt(area_gross),
        fmt_opt(location.and_then(|l| l.0)),
        comparison.as_ref().map_or(Value::Null, |c| c["ratio"].clone()),
        fmt_opt(area_above),
        fmt_opt(location.and_then(|l| l.1)),
        comparison.as_ref().map_or(Value::Null, |c| c["ratio_above_baseline"].clone()),
        convergence["clients_mismatched"],
        convergence["clients_checked"],
        convergence["vendors_mismatched"],
        if problems.is_empty() { "ok".to_owned() } else { format!("FAILED ({})", problems.join("; ")) },
    );
    eprintln!("{summary}");
    Ok(json!({
        "label": args.label,
        "scenario": "s4",
        "transport": "websocket", "url": args.session_url(), "via": format!("{:?}", args.via()).to_lowercase(),
        "conns": plan.conns, "vendors": plan.vendors, "rate": rate, "duration_s": plan.duration,
        "location_conns": g.location_conns, "follow": g.follow,
        "city_km": g.city_km, "area_km": g.area_km, "pan_fraction": g.pan_fraction, "pan_every_ms": g.pan_every_ms,
        "pan_km": g.pan_km, "step_m": g.step_m, "edge_fraction": g.edge_fraction, "seed": g.seed,
        "connected": area_connected, "connect_failed": c.connect_failed, "connect_errors": tally.errors(),
        "rss_kib": {"idle": rss_idle, "connected": rss_connected, "end": rss_end},
        "rss_per_area_conn_kib": rss_connected.zip(rss_idle).filter(|_| area_connected > 0)
            .map(|(a, b)| round3((a as f64 - b as f64) / area_connected as f64)),
        "steps": phases,
        "area": {
            "deliveries_per_s": area_json_field(&phases, "deliveries_per_s"),
            "lat_ms": area_json_field(&phases, "lat_ms"),
            "server_cpu_us_per_delivery": area_gross,
            "server_cpu_us_per_delivery_above_baseline": area_above,
            "snapshots": c.snapshots, "snapshot_vendors": c.snapshot_vendors, "truncated": c.truncated,
            "pans": {"sent": c.pans_sent, "acked": c.pans_acked, "skipped": c.pans_skipped},
            "violations": c.violations,
        },
        "comparison": comparison,
        "convergence": {"settle_ms": settle_ms, "edge_updates_total": world.edge_updates, "details": convergence,
                        "late": late},
        "gateway_metrics": gateway_metrics,
        "ok": problems.is_empty(),
        "problems": problems,
        "conns_dropped_total": c.dropped,
        "errors": tally.errors(),
        "publish_errors": publish_errors,
        "run_s": round3(t_run.elapsed().as_secs_f64()),
        "loadavg": {"start": load_start, "end": sys::loadavg()},
    }))
}

fn fmt_opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_owned(), |x| x.to_string())
}

fn area_json_field(phases: &[Value], key: &str) -> Value {
    phases.iter().rev().find(|p| p["name"] == "area").map_or(Value::Null, |p| p[key].clone())
}

fn published(p: &Publisher) -> u64 {
    p.stats().published.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits until `n` clients counted by `which` connected or failed (since
/// `before`), bounded by the schedule (started at `t0`) plus one handshake
/// timeout; returns the seconds since `t0`.
async fn wait_connected(
    t0: Instant,
    tally: &Tally,
    before: &Counts,
    n: usize,
    plan: &Plan,
    args: &BenchArgs,
    which: impl Fn(&Counts) -> u64,
) -> f64 {
    let deadline = t0
        + Duration::from_secs_f64(n as f64 / plan.connect_rate)
        + Duration::from_millis(args.connect_timeout_ms)
        + Duration::from_secs(5);
    loop {
        let c = tally.c.get().since(before);
        if which(&c) + c.connect_failed >= n as u64 || Instant::now() >= deadline {
            return t0.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the per-vendor deliveries owed (since `from`), at most
/// `drain_ms`, giving up after 1.5 s without progress; returns the wait.
async fn drain(tally: &Tally, from: &Counts, expected: u64, drain_ms: u64) -> u128 {
    let t0 = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let got = tally.c.get().since(from).location;
        if got >= expected || t0.elapsed() >= Duration::from_millis(drain_ms) {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(1500) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed().as_millis()
}

/// Waits until no area message (nor pan answer) came for [`QUIET`] and
/// every pan was answered, at most `max`; returns the wait (ms).
async fn settle_area(tally: &Tally, max: Duration) -> u128 {
    let t0 = Instant::now();
    let mut last = (tally.c.get(), Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = tally.c.get();
        if now.area_deliveries() != last.0.area_deliveries() || now.pans_acked != last.0.pans_acked {
            last = (now, Instant::now());
        }
        let pans_done = now.pans_acked >= now.pans_sent;
        if (last.1.elapsed() >= QUIET && pans_done) || t0.elapsed() >= max {
            return t0.elapsed().as_millis();
        }
    }
}

/// The gateway's area counters from `GET /metrics` (`venta_area*` and
/// slow-consumer lines), when it serves them: what the gateway itself saw
/// (index errors, events by type).
async fn area_metrics(http_url: &str) -> Value {
    let url = format!("{http_url}/metrics");
    let get = async { reqwest::get(&url).await.ok()?.text().await.ok() };
    let Ok(Some(text)) = tokio::time::timeout(Duration::from_secs(5), get).await else { return Value::Null };
    let lines: serde_json::Map<String, Value> = text
        .lines()
        .filter(|l| !l.starts_with('#') && (l.starts_with("venta_area") || l.contains("slow")))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| v.parse::<f64>().ok().map(|v| (k.to_owned(), json!(v))))
        .collect();
    Value::Object(lines)
}

/// Every area client's view against the truth.
async fn converge(clients: &[mpsc::Sender<Cmd>], positions: &[Option<Pos>]) -> Value {
    let mut reports: Vec<(usize, Report)> = Vec::with_capacity(clients.len());
    let mut unanswered = 0u64;
    for (i, tx) in clients.iter().enumerate() {
        let (rtx, rrx) = oneshot::channel();
        if tx.send(Cmd::Report(rtx)).await.is_err() {
            continue; // never connected, or gone (counted as such)
        }
        match tokio::time::timeout(Duration::from_secs(5), rrx).await {
            Ok(Ok(r)) => reports.push((i, r)),
            _ => unanswered += 1,
        }
    }
    let (mut mismatched, mut extra_total, mut missing_total, mut foreign, mut pending, mut truncated) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut inside_total, mut on_edge) = (0u64, 0u64);
    let mut examples = Vec::new();
    for (i, r) in &reports {
        let truth = city::inside(&r.rect, positions);
        inside_total += truth.len() as u64;
        on_edge +=
            truth.iter().filter(|v| positions[**v as usize].is_some_and(|p| City::on_edge(&r.rect, p))).count() as u64;
        let (extra, missing) = city::mismatch(&r.inside, &truth);
        foreign += r.foreign as u64;
        pending += u64::from(r.pan_pending);
        truncated += u64::from(r.truncated);
        if extra + missing + r.foreign > 0 {
            mismatched += 1;
            extra_total += (extra + r.foreign) as u64;
            missing_total += missing as u64;
            if examples.len() < EXAMPLES {
                examples.push(example(*i, r, &truth, positions));
            }
        }
    }
    json!({
        "clients_checked": reports.len(), "unanswered": unanswered,
        "clients_mismatched": mismatched,
        "vendors_mismatched": extra_total + missing_total,
        "vendors_extra": extra_total, "vendors_missing": missing_total, "foreign": foreign,
        "pan_pending": pending, "truncated": truncated,
        "vendors_inside_total": inside_total, "vendors_on_an_edge": on_edge,
        "examples": examples,
    })
}

/// One mismatched client, with what a reproduction needs.
fn example(i: usize, r: &Report, truth: &[u32], positions: &[Option<Pos>]) -> Value {
    let truth_set: std::collections::HashSet<u32> = truth.iter().copied().collect();
    let believed: std::collections::HashSet<u32> = r.inside.iter().copied().collect();
    let describe = |v: &u32| {
        let p = positions.get(*v as usize).copied().flatten();
        json!({"vendor": v, "last_published": p.map(|p| p.degrees()), "on_edge": p.is_some_and(|p| City::on_edge(&r.rect, p))})
    };
    let extra: Vec<Value> = r.inside.iter().filter(|v| !truth_set.contains(v)).take(5).map(describe).collect();
    let missing: Vec<Value> = truth.iter().filter(|v| !believed.contains(v)).take(5).map(describe).collect();
    json!({"client": i, "bbox": r.rect.bbox_json(), "pan_pending": r.pan_pending, "extra": extra, "missing": missing})
}
