//! A NATS cluster that loses a node (issue 17 §1): three nats-server nodes
//! of the test's own on loopback (routes, JetStream with `sync_interval:
//! always`, the last-value stream and the area KV at replicas 3), three
//! gateways each given all three URLs (its own node first), clients on
//! every gateway, and publishers on every node.
//!
//! Updates carry their sequence number in `lat` (`seq / 1000`) and the
//! publishing node in `long`, so every client can tell a lost, a duplicated
//! and a reordered update apart.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::nats::{NatsCluster, unique_prefix};
use common::{Event, TestGateway, WsClient, test_config, wait_until};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One cluster at a time: three nodes electing JetStream leaders each, and
/// their gateways, already fill this machine's two cores; two at once make
/// elections and failovers slow enough to blur what the tests measure.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A gateway on the cluster: all URLs, `first` at the head of the list.
fn cluster_config(cluster: &NatsCluster, first: usize, prefix: &str) -> venta_gateway::Config {
    let mut c = test_config();
    let mut urls = vec![cluster.url(first)];
    urls.extend((0..cluster.len()).filter(|i| *i != first).map(|i| cluster.url(i)));
    c.nats.url = Some(urls.join(","));
    c.nats.subject_prefix = prefix.to_owned();
    c.nats.interest_linger_ms = 100;
    c.nats.last_value_replicas = 3;
    c.nats.health_probe_interval_ms = 200;
    c.geo.kv_replicas = 3;
    c.limits.rate_limit = 100_000;
    c
}

async fn jetstream_ok(gw: &TestGateway) -> bool {
    gw.health().await.1["checks"]["jetstream"]["status"] == "ok"
}

/// Three gateways, ready, with the replicated stream set up.
async fn gateways(cluster: &NatsCluster, prefix: &str) -> Vec<TestGateway> {
    let mut gws = Vec::new();
    for i in 0..3 {
        let gw = TestGateway::start_with(cluster_config(cluster, i, prefix)).await;
        wait_until("gateway ready", async || gw.is_ready().await).await;
        gws.push(gw);
    }
    for gw in &gws {
        wait_until("JetStream ok", async || jetstream_ok(gw).await).await;
    }
    gws
}

/// A plain NATS client on node `i` only (a backend publishing there).
async fn publisher_on(cluster: &NatsCluster, i: usize) -> async_nats::Client {
    async_nats::ConnectOptions::new().ignore_discovered_servers().connect(cluster.url(i)).await.unwrap()
}

fn update(vendor: &str, seq: u64, node: usize) -> bytes::Bytes {
    let lat = seq as f64 / 1000.0;
    json!({"vendorId": vendor, "location": {"lat": lat, "long": node as f64}}).to_string().into()
}

/// (sequence, node) of a `location_updated`.
fn seq_of(u: &Value) -> Option<(u64, usize)> {
    if u["type"] != "location_updated" {
        return None;
    }
    let lat = u["data"]["location"]["lat"].as_f64()?;
    let long = u["data"]["location"]["long"].as_f64()?;
    Some(((lat * 1000.0).round() as u64, long.round() as usize))
}

/// The node gateway `gw`'s NATS connection is on, found through a
/// subscription only it holds (`where<tag>`, taken by `c`).
async fn node_of(cluster: &NatsCluster, prefix: &str, tag: &str) -> usize {
    let subject = format!("{prefix}.location.where{tag}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for i in 0..cluster.len() {
            if cluster.has_subscription(i, &subject).await {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no node holds {subject}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a ping and reads up to its pong: every message before it. (Only a
/// barrier for what the gateway already has: an update still travelling
/// between NATS nodes can come after the pong.)
async fn drain_to_pong(c: &mut WsClient, id: &str) -> Vec<Value> {
    c.send_json(json!({"type": "ping", "id": id})).await;
    let mut out = Vec::new();
    loop {
        let m = c.recv().await;
        if m == json!({"type": "pong", "id": id}) {
            return out;
        }
        out.push(m);
    }
}

/// Messages until `n` arrived or `within` passed.
async fn collect(c: &mut WsClient, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout_at(deadline, c.next_event()).await {
            Ok(Event::Json(v)) => out.push(v),
            Ok(closed) => panic!("client closed: {closed:?}"),
            Err(_) => break,
        }
    }
    out
}

/// Publishes on any node reach every subscriber on every gateway exactly
/// once, and the `subscribed` ack means live cluster-wide: an update
/// published on another node the moment the ack arrives is delivered.
#[tokio::test]
async fn publishes_on_any_node_reach_every_subscriber_exactly_once() {
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let cluster = NatsCluster::start(3).await;
    let prefix = unique_prefix();
    let gws = gateways(&cluster, &prefix).await;
    let pubs = [publisher_on(&cluster, 0).await, publisher_on(&cluster, 1).await, publisher_on(&cluster, 2).await];
    let mut clients = Vec::new();
    let mut nodes = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        let mut c = WsClient::connect(&gw.url("/ws/location")).await;
        c.subscribe("location", &format!("where{g}")).await;
        nodes.push(node_of(&cluster, &prefix, &g.to_string()).await);
        clients.push(c);
    }
    eprintln!("gateways are on nodes {nodes:?}");

    // The race: subscribe, and on the ack publish on both other nodes.
    let rounds = 40;
    let mut late = 0;
    for round in 0..rounds {
        for (g, c) in clients.iter_mut().enumerate() {
            let vendor = format!("r{round}g{g}");
            c.subscribe("location", &vendor).await;
            let others: Vec<usize> = (0..3).filter(|n| *n != nodes[g]).collect();
            for &n in &others {
                pubs[n].publish(format!("{prefix}.location.{vendor}"), update(&vendor, 1, n)).await.unwrap();
            }
            for &n in &others {
                pubs[n].flush().await.unwrap();
            }
            let got = collect(c, others.len(), Duration::from_secs(2)).await;
            let from: HashSet<usize> =
                got.iter().filter(|u| u["data"]["vendorId"] == *vendor).filter_map(seq_of).map(|(_, n)| n).collect();
            if from != others.iter().copied().collect() || got.len() != others.len() {
                late += 1;
                eprintln!("round {round}, gateway {g} on node {}: got {got:?}, published on {others:?}", nodes[g]);
            }
        }
    }
    assert_eq!(late, 0, "updates published on another node right after the ack were lost ({late} of {})", rounds * 3);

    // Exactly once: every client on one vendor, 50 updates from each node.
    for c in &mut clients {
        c.subscribe("location", "shared").await;
    }
    for seq in 1..=50 {
        for (n, p) in pubs.iter().enumerate() {
            p.publish(format!("{prefix}.location.shared"), update("shared", seq, n)).await.unwrap();
        }
    }
    for p in &pubs {
        p.flush().await.unwrap();
    }
    for (g, c) in clients.iter_mut().enumerate() {
        let mut seen = HashSet::new();
        while seen.len() < 150 {
            let u = c.recv().await;
            let Some(key) = seq_of(&u) else { panic!("gateway {g}: unexpected {u}") };
            assert!(seen.insert(key), "gateway {g}: {key:?} delivered twice");
        }
    }
    // Then a marker from each node: a node's updates reach a subscriber in
    // order, so whatever comes before the three markers is a duplicate.
    for (n, p) in pubs.iter().enumerate() {
        p.publish(format!("{prefix}.location.shared"), update("shared", 1000, n)).await.unwrap();
        p.flush().await.unwrap();
    }
    for (g, c) in clients.iter_mut().enumerate() {
        let tail = collect(c, 3, Duration::from_secs(10)).await;
        let markers: HashSet<(u64, usize)> = tail.iter().filter_map(seq_of).collect();
        assert_eq!(markers, (0..3).map(|n| (1000, n)).collect(), "gateway {g}: delivered more than once: {tail:?}");
        assert!(drain_to_pong(c, "end").await.is_empty(), "gateway {g}: more after the markers");
    }
    for gw in gws {
        gw.shutdown().await;
    }
}

/// What a client received, with when.
type Log = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Reads a client in the background, logging each update's sequence,
/// until `stop`; hands the client back.
fn record(mut c: WsClient, log: Log, stop: CancellationToken) -> tokio::task::JoinHandle<WsClient> {
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = stop.cancelled() => return c,
                e = c.next_event() => e,
            };
            match event {
                Event::Json(u) => {
                    if let Some((seq, _)) = seq_of(&u) {
                        log.lock().push((seq, Instant::now()));
                    }
                }
                Event::Closed(code, reason) => {
                    panic!("client disconnected ({code:?} {reason}): it must stay connected")
                }
            }
        }
    })
}

/// The publisher's side: the time each sequence number was sent.
type Sent = Arc<Mutex<Vec<Instant>>>;

/// Kills the node a gateway is on, under load, over several cycles; brings
/// it back each time. The gateway moves to another node, its clients stay
/// connected, every subscription keeps working within a measured bound,
/// nothing is delivered twice or out of order, `/health` shows the episode,
/// and the last value (replicas 3) survives for a new subscriber.
#[tokio::test]
async fn a_gateway_keeps_its_clients_across_the_loss_of_its_node() {
    let started = Instant::now();
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = NatsCluster::start(3).await;
    let prefix = unique_prefix();
    let gws = gateways(&cluster, &prefix).await;

    // Six clients (two per gateway) on the loaded vendor, each recording.
    let stop = CancellationToken::new();
    let mut logs = Vec::new();
    let mut readers = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        for k in 0..2 {
            let mut c = WsClient::connect(&gw.url("/ws/location")).await;
            c.subscribe("location", "load").await;
            if k == 0 {
                c.subscribe("location", &format!("where{g}")).await;
            }
            let log = Log::default();
            readers.push((g, record(c, Arc::clone(&log), stop.clone())));
            logs.push((g, log));
        }
    }

    // A publisher given every node (it fails over too), sending every 5 ms.
    let urls: Vec<async_nats::ServerAddr> = cluster.urls().iter().map(|u| u.parse().unwrap()).collect();
    let publisher = async_nats::connect(urls).await.unwrap();
    let sent = Sent::default();
    let pub_task = {
        let (publisher, sent, stop, prefix) = (publisher.clone(), Arc::clone(&sent), stop.clone(), prefix.clone());
        tokio::spawn(async move {
            let mut seq = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            while !stop.is_cancelled() {
                tick.tick().await;
                seq += 1;
                sent.lock().push(Instant::now());
                // A publish during the publisher's own reconnect is buffered
                // by the client; one lost with its node is a gap, not an error.
                let _ = publisher.publish(format!("{prefix}.location.load"), update("load", seq, 0)).await;
            }
            seq
        })
    };
    let js = async_nats::jetstream::new(publisher.clone());

    let cycles = 3;
    let mut bounds = Vec::new();
    for cycle in 0..cycles {
        // An acknowledged write just before the loss: it must survive it.
        let kept = format!("kept{cycle}");
        let ack = js.publish(format!("{prefix}.location.{kept}"), update(&kept, 4242, 0)).await.unwrap();
        ack.await.unwrap();

        let victim = node_of(&cluster, &prefix, "0").await;
        let on_victim: Vec<usize> = {
            let mut v = Vec::new();
            for g in 0..3 {
                if node_of(&cluster, &prefix, &g.to_string()).await == victim {
                    v.push(g);
                }
            }
            v
        };
        let disconnects_before: Vec<u64> = gws.iter().map(|gw| gw.shared.metrics.bus_disconnects.get()).collect();
        let killed_at = Instant::now();
        cluster.kill(victim);
        eprintln!("cycle {cycle}: killed node {victim} (gateways {on_victim:?} were on it)");

        // Every client gets an update sent after the kill; how long that
        // takes is the failover bound.
        let first_after = |log: &Log| -> Option<Instant> {
            let sent = sent.lock();
            log.lock()
                .iter()
                .find(|(seq, _)| sent.get(*seq as usize - 1).is_some_and(|t| *t > killed_at))
                .map(|(_, at)| *at)
        };
        wait_until("every client served after the kill", async || logs.iter().all(|(_, l)| first_after(l).is_some()))
            .await;
        let worst = logs.iter().filter_map(|(_, l)| first_after(l)).map(|at| at - killed_at).max().unwrap_or_default();
        eprintln!("cycle {cycle}: every client had a post-kill update {worst:?} after the kill");
        bounds.push(worst);

        for &g in &on_victim {
            let gw = &gws[g];
            assert!(
                gw.shared.metrics.bus_disconnects.get() > disconnects_before[g],
                "gateway {g}: the episode shows in venta_bus_disconnects_total"
            );
            wait_until("gateway ready again", async || gw.is_ready().await).await;
            let moved = node_of(&cluster, &prefix, &g.to_string()).await;
            assert_ne!(moved, victim, "gateway {g} moved to a live node");
        }

        // A new subscriber on a gateway that lost its node still gets the
        // acknowledged last value as its snapshot.
        let gw = &gws[on_victim[0]];
        wait_until("JetStream ok after the failover", async || jetstream_ok(gw).await).await;
        let mut fresh = WsClient::connect(&gw.url("/ws/location")).await;
        fresh.subscribe("location", &kept).await;
        let snap = fresh.recv().await;
        assert_eq!(
            (seq_of(&snap).map(|(s, _)| s), &snap["data"]["snapshot"]),
            (Some(4242), &json!(true)),
            "cycle {cycle}: the last value survived the loss of node {victim}: {snap}"
        );
        drop(fresh);

        let restart_at = Instant::now();
        cluster.restart(victim).await;
        eprintln!("cycle {cycle}: node {victim} back and healthy in {:?}", restart_at.elapsed());
        for gw in &gws {
            wait_until("JetStream ok with the node back", async || jetstream_ok(gw).await).await;
        }
    }

    // Converge: stop the load, then every client holds the last update.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let last = pub_task.await.unwrap();
    publisher.flush().await.unwrap();
    let final_seq = last + 1;
    publisher.publish(format!("{prefix}.location.load"), update("load", final_seq, 0)).await.unwrap();
    publisher.flush().await.unwrap();
    let mut clients = Vec::new();
    for (g, reader) in readers {
        clients.push((g, reader.await.unwrap()));
    }
    for ((g, c), (_, log)) in clients.iter_mut().zip(&logs) {
        // Up to the final update (a pong alone would not wait for what is
        // still travelling between nodes), then anything after it.
        let mut tail = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tail.iter().any(|u| seq_of(u).is_some_and(|(s, _)| s == final_seq)) {
            match tokio::time::timeout_at(deadline, c.next_event()).await {
                Ok(Event::Json(u)) => tail.push(u),
                Ok(closed) => panic!("gateway {g}: client closed: {closed:?}"),
                Err(_) => break,
            }
        }
        tail.extend(drain_to_pong(c, "end").await);
        let mut seqs: Vec<u64> = log.lock().iter().map(|(s, _)| *s).collect();
        seqs.extend(tail.iter().filter_map(seq_of).map(|(s, _)| s));
        let ordered = seqs.windows(2).all(|w| w[0] < w[1]);
        let missing = final_seq - seqs.len() as u64;
        eprintln!("gateway {g}: {} updates, {missing} lost (during the kills), in order: {ordered}", seqs.len());
        assert!(ordered, "gateway {g}: an update twice or out of order");
        assert_eq!(seqs.last(), Some(&final_seq), "gateway {g}: converged on the last update");
    }
    let worst = bounds.iter().max().copied().unwrap_or_default();
    eprintln!("failover bounds per cycle {bounds:?}; whole test {:?}", started.elapsed());
    assert!(worst < Duration::from_secs(10), "failover took {worst:?}");
    for gw in gws {
        gw.shutdown().await;
    }
}
