//! Staying up (docs/protocol.md): slow consumers, shutdown at scale, reconnect
//! storms, and dependency faults while clients are connected and updates
//! flow.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::nats::{OwnNats, Proxy, unique_prefix};
use common::{Event, GatewayProcess, TestGateway, WsClient, free_port, test_config, wait_until};
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::{Value, json};
use venta_gateway::protocol::{Channel, Update};

/// A client whose socket receive buffer is tiny (no autotuning), so the
/// gateway's writes block as soon as it stops reading.
async fn stalled_client(url: &str) -> WsClient {
    let addr: std::net::SocketAddr = url.trim_start_matches("ws://").split('/').next().unwrap().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(8 * 1024).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream)).await.unwrap();
    WsClient { ws, auto_pong: true }
}

fn location(vendor: &str, lat: f64) -> Update {
    let body = json!({"vendorId": vendor, "location": {"lat": lat, "long": 0.0}});
    Update::from_publish_value(Channel::Location, body, None).unwrap()
}

#[tokio::test]
async fn a_stalled_client_gets_the_newest_positions_and_costs_bounded_memory() {
    let config = test_config();
    let limit = config.limits.max_queue_messages;
    let gw = TestGateway::start_with(config).await;
    let vendors: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let mut slow = stalled_client(&gw.url("/ws/location")).await;
    let mut fast = WsClient::connect(&gw.url("/ws/location")).await;
    for v in &vendors {
        slow.subscribe("location", v).await;
        fast.subscribe("location", v).await;
    }
    const N: usize = 100_000;
    let per_vendor = N / vendors.len();
    let received = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    // The healthy client checks it sees every update, in order, per vendor.
    let fast_task = tokio::spawn(async move {
        let mut next = [0usize; 10];
        for _ in 0..N {
            let u = fast.recv().await;
            let v: usize = u["data"]["vendorId"].as_str().unwrap()[1..].parse().unwrap();
            let seq = (u["data"]["location"]["lat"].as_f64().unwrap() * 10_000.0).round() as usize;
            assert_eq!(seq, next[v], "vendor r{v} skipped or repeated an update");
            next[v] += 1;
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut max_depth = 0;
    for i in 0..N {
        let (v, seq) = (i % vendors.len(), i / vendors.len());
        gw.shared.bus.publish(location(&vendors[v], seq as f64 / 10_000.0)).await.unwrap();
        if i % 250 == 0 {
            // Pace to the healthy reader (never more than 500 in flight for it).
            while i.saturating_sub(received.load(Ordering::Relaxed)) > 500 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let depth = gw.shared.hub.queue_depths().values().map(|d| d.0).max().unwrap_or(0);
            max_depth = max_depth.max(depth);
        }
    }
    fast_task.await.unwrap();
    // Bounded: the stalled client's queue never held more than the limit
    // plus one position per vendor, however many updates went by.
    assert!(max_depth <= limit + vendors.len(), "queue reached {max_depth} (limit {limit})");
    let conflated = gw.shared.metrics.conflated.get();
    assert!(conflated > 0, "the stalled client was never conflated: was it really stalled?");
    // Reading again, the stalled client ends with the newest position of
    // every vendor, without the whole backlog.
    let last = (per_vendor - 1) as f64 / 10_000.0;
    let mut newest = vec![-1.0f64; vendors.len()];
    let mut got = 0usize;
    while newest.iter().any(|l| *l != last) {
        let u = slow.recv().await;
        let v: usize = u["data"]["vendorId"].as_str().unwrap()[1..].parse().unwrap();
        let lat = u["data"]["location"]["lat"].as_f64().unwrap();
        assert!(lat >= newest[v], "positions of r{v} went backwards");
        newest[v] = lat;
        got += 1;
    }
    assert!(got < N, "the stalled client got the whole backlog ({got}), nothing was conflated");
    // With WS_SEND_BUFFER_BYTES bounding the kernel's share, the backlog the
    // client wades through is about the queue limit, not the ~23,000 stale
    // positions that an autotuned 4 MiB send buffer held.
    assert!(got < 10_000, "{got} stale positions before the newest ones");
    slow.send_json(json!({"type": "ping", "id": "after"})).await;
    assert_eq!(slow.recv().await["id"], "after", "nothing stale after the newest positions");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_stalled_client_on_vendor_data_is_closed_with_1013_and_others_get_everything() {
    let mut config = test_config();
    config.limits.max_queue_bytes = 256 * 1024;
    let gw = TestGateway::start_with(config).await;
    let mut slow = stalled_client(&gw.url("/ws/vendor")).await;
    let mut fast = WsClient::connect(&gw.url("/ws/vendor")).await;
    slow.subscribe("vendor", "big").await;
    fast.subscribe("vendor", "big").await;
    const N: usize = 4000;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    let fast_task = tokio::spawn(async move {
        for i in 0..N {
            let u = fast.recv().await;
            assert_eq!(u["data"]["vendor"]["seq"].as_u64(), Some(i as u64), "vendor updates are never dropped");
            counter.fetch_add(1, Ordering::Relaxed);
        }
        fast
    });
    let pad = "x".repeat(2000);
    for i in 0..N {
        let body = json!({"vendorId": "big", "vendor": {"name": "Big", "seq": i, "pad": pad}});
        gw.shared.bus.publish(Update::from_publish_value(Channel::Vendor, body, None).unwrap()).await.unwrap();
        while i.saturating_sub(received.load(Ordering::Relaxed)) > 100 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let mut fast = fast_task.await.unwrap();
    assert_eq!(gw.shared.metrics.slow_consumers_closed.get(), 1);
    let (code, reason) = slow.closed().await;
    assert_eq!(code, Some(1013));
    assert!(reason.contains("slow consumer"), "{reason}");
    fast.send_json(json!({"type": "ping", "id": "still"})).await;
    assert_eq!(fast.recv().await["id"], "still");
    gw.shutdown().await;
}

#[tokio::test]
async fn sigterm_with_a_thousand_clients_closes_all_with_1001_and_exits_0() {
    let mut gw = GatewayProcess::spawn(free_port(), &[("WS_MAX_CONNECTIONS", "2000")]).await;
    let url = gw.url("/ws/location");
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.extend(join_all((0..100).map(|_| WsClient::connect(&url))).await);
    }
    join_all(
        clients
            .iter_mut()
            .enumerate()
            .map(|(i, c)| async move { c.subscribe("location", &format!("v{}", i % 50)).await }),
    )
    .await;
    let status: Value = reqwest::get(gw.http("/ws/status")).await.unwrap().json().await.unwrap();
    assert_eq!(status["connections"]["total"], 1000);
    gw.signal("TERM");
    let codes = join_all(clients.iter_mut().map(|c| c.closed())).await;
    assert!(codes.iter().all(|(code, _)| *code == Some(1001)), "{:?}", codes.iter().find(|c| c.0 != Some(1001)));
    assert_eq!(gw.wait_exit().await, Some(0));
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut gw = GatewayProcess::spawn(free_port(), &[]).await;
    // A stalled client with a full socket keeps the graceful path busy.
    let mut slow = stalled_client(&gw.url("/ws/vendor")).await;
    slow.subscribe("vendor", "s1").await;
    let pad = "y".repeat(60_000);
    for i in 0..80 {
        common::publish(
            &gw.http("/api/v1/publish/vendor"),
            &json!({"vendorId": "s1", "vendor": {"name": "n", "i": i, "pad": pad}}),
        )
        .await;
    }
    gw.signal("TERM");
    // Not ready any more: the first signal was taken (and the handler of a
    // second one is armed) ...
    let ready = gw.http("/health/ready");
    wait_until("the first signal taken", async || {
        let answer = tokio::time::timeout(Duration::from_secs(2), reqwest::get(&ready)).await;
        !matches!(answer, Ok(Ok(r)) if r.status() == 200)
    })
    .await;
    // ... and the graceful path is still held up by the stalled client.
    assert!(gw.child.try_wait().unwrap().is_none(), "graceful shutdown is still waiting for the stalled client");
    gw.signal("TERM");
    let start = std::time::Instant::now();
    assert_eq!(gw.wait_exit().await, Some(130));
    assert!(start.elapsed() < Duration::from_secs(1), "the second signal did not exit at once");
    drop(slow);
}

#[tokio::test]
async fn a_reconnect_storm_after_a_restart_is_admitted() {
    let port = free_port();
    let env = [("WS_MAX_CONNECTIONS", "3000")];
    let gw = GatewayProcess::spawn(port, &env).await;
    let url = gw.url("/ws/location");
    let mut clients = join_all((0..2000).map(|_| WsClient::connect(&url))).await;
    drop(gw); // killed: every client loses its connection at once
    for c in clients.iter_mut().take(5) {
        assert!(matches!(c.next_event().await, Event::Closed(..)));
    }
    drop(clients);
    let gw = GatewayProcess::spawn(port, &env).await;
    // All 2,000 come back at the same moment and are all admitted.
    let mut clients = join_all((0..2000).map(|_| WsClient::connect(&url))).await;
    join_all(clients.iter_mut().map(|c| c.subscribe("location", "storm"))).await;
    let status: Value = reqwest::get(gw.http("/ws/status")).await.unwrap().json().await.unwrap();
    assert_eq!(status["connections"]["total"], 2000);
    assert_eq!(status["subscriptions"], 2000);
}

#[tokio::test]
async fn nats_and_redis_faults_under_load_disconnect_no_client() {
    let own = OwnNats::start().await;
    let nats_proxy = Proxy::start(format!("127.0.0.1:{}", own.port).parse().unwrap()).await;
    let redis_proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let prefix = unique_prefix();
    let mut config = test_config();
    config.nats.url = Some(format!("nats://{}", nats_proxy.addr));
    config.nats.subject_prefix = prefix.clone();
    config.redis.url = Some(format!("redis://{}", redis_proxy.addr));
    config.redis.key_prefix = format!("venta:test:{}:", uuid::Uuid::new_v4().simple());
    config.limits.rate_limit = 10_000;
    let gw = TestGateway::start_with(config).await;
    let health = async || -> (u16, Value) {
        let r = reqwest::get(gw.http("/health")).await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    };
    let wait_health = async |want_status: &str, check: &str, want_check: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, h) = health().await;
            common::assert_schema("http/health.json", &h);
            if h["status"] == want_status && h["checks"][check]["status"] == want_check {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "health never {want_status}/{check}={want_check}: {h}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_health("ok", "redis", "ok").await; // NATS, JetStream and Redis all up
    let url = gw.url("/ws/location");
    let mut clients = join_all((0..50).map(|_| WsClient::connect(&url))).await;
    for (i, c) in clients.iter_mut().enumerate() {
        c.subscribe("location", &format!("f{}", i % 5)).await;
    }
    // Updates flow the whole time, straight into NATS.
    let publisher = async_nats::connect(own.url()).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let flow = {
        let (publisher, stop, prefix) = (publisher.clone(), stop.clone(), prefix.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let v = format!("f{}", i % 5);
                let body = json!({"vendorId": v, "location": {"lat": 1.0, "long": (i % 180) as f64}});
                let _ = publisher.publish(format!("{prefix}.location.{v}"), body.to_string().into()).await;
                i += 1;
                // The load's pace (200 updates/s), not synchronisation.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Readers drain in the background and record any close.
    let closes = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let (closes, delivered) = (Arc::clone(&closes), Arc::clone(&delivered));
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(Duration::from_secs(30), c.ws.next()).await {
                        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(_)))) => {
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))))
                        | Ok(None)
                        | Ok(Some(Err(_))) => {
                            closes.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Ok(Some(Ok(_))) => {}
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let flowing = async |what: &str| {
        let before = delivered.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while delivered.load(Ordering::Relaxed) < before + 500 {
            assert!(tokio::time::Instant::now() < deadline, "updates did not flow {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    flowing("at first").await;

    nats_proxy.cut();
    wait_health("down", "nats", "down").await;
    // The outage itself (half a second of updates failing under load),
    // not synchronisation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats_proxy.restore();
    wait_health("ok", "nats", "ok").await;
    flowing("after the NATS outage").await;

    redis_proxy.cut();
    // Rate-limit checks happen on client messages: send some to notice.
    let mut probe = WsClient::connect(&url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        probe.send_json(json!({"type": "ping"})).await;
        assert_eq!(probe.recv().await["type"], "pong", "served during the Redis outage");
        if health().await.1["checks"]["redis"]["status"] == "down" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "Redis outage never noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, h) = health().await;
    assert_eq!((code, h["status"].as_str()), (200, Some("degraded")), "Redis down: degraded, still 200");
    redis_proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        probe.send_json(json!({"type": "ping"})).await;
        assert_eq!(probe.recv().await["type"], "pong");
        if health().await.1["checks"]["redis"]["status"] == "ok" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "Redis never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    flowing("after the Redis outage").await;
    stop.cancel();
    flow.await.unwrap();
    assert_eq!(closes.load(Ordering::Relaxed), 0, "a client was disconnected by a dependency fault");
    for r in readers {
        r.abort();
    }
    gw.shutdown().await;
}
