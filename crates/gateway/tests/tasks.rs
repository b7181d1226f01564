//! No task outlives a gateway: starting and stopping one, with NATS and
//! Redis configured and clients on both transports, leaves the runtime with
//! the tasks it had before (a background task per gateway that never ends
//! would hold the whole gateway, and grow with every restart in a process).

mod common;

use common::nats::{MACHINE_NATS, require_machine_nats, unique_prefix};
use common::wt::WtClient;
use common::{TestGateway, WsClient, test_config, wait_until};

const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_is_left_after_shutdown() {
    require_machine_nats();
    let runtime = tokio::runtime::Handle::current();
    let baseline = runtime.metrics().num_alive_tasks();
    // Held to the end: the tasks must end at shutdown, not only when the
    // last reference to a gateway's state goes.
    let mut kept = Vec::new();
    for round in 0..ROUNDS {
        let mut config = test_config();
        config.nats.url = Some(MACHINE_NATS.into());
        config.nats.subject_prefix = unique_prefix();
        config.redis.url = Some("redis://127.0.0.1:6379".into());
        config.redis.key_prefix = format!("venta:test:{}:", uuid::Uuid::new_v4().simple());
        config.nats.health_probe_interval_ms = 200;
        let gw = TestGateway::start_with(config).await;
        wait_until("gateway ready", async || gw.is_ready().await).await;
        wait_until("redis ok", async || gw.health().await.1["checks"]["redis"]["status"] == "ok").await;
        // A NATS interest per transport (each with its reader task), and a
        // delivery through each; the WebSocket client stays connected
        // through the shutdown, the WebTransport one leaves first.
        let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
        ws.subscribe("location", "v1").await;
        let mut wt = WtClient::connect(&gw, "/wt/location").await;
        wt.subscribe("location", "v2").await;
        gw.publish_location("v1", 1.0, 2.0).await;
        gw.publish_location("v2", 1.0, 2.0).await;
        assert_eq!(ws.recv().await["type"], "location_updated");
        assert_eq!(wt.recv().await["type"], "location_updated");
        drop(wt);
        kept.push(std::sync::Arc::clone(&gw.shared));
        assert!(gw.shutdown().await, "round {round}: shutdown not clean");
        let shared = &kept[round];
        assert!(shared.tasks.is_empty() && shared.tracker.is_empty(), "round {round}: tracked tasks left");
        assert_eq!(ws.closed().await.0, Some(1001), "round {round}");
    }
    // Tasks end asynchronously (an aborted or cancelled one is dropped when
    // the runtime next polls it): wait for the count, bounded.
    wait_until("every gateway task ended", async || {
        let alive = runtime.metrics().num_alive_tasks();
        if alive > baseline {
            eprintln!("{alive} tasks alive, {baseline} before the first gateway");
        }
        alive <= baseline
    })
    .await;
    drop(kept);
}
