//! One admission gate for every transport: WebSocket and WebTransport
//! refuse the same attempts, for the same reasons, counted under the same
//! metric labels.

mod common;

use common::wt::{cert_hash, client_endpoint};
use common::{TestGateway, WsClient, test_config};
use wtransport::endpoint::ConnectOptions;

fn rejected(gw: &TestGateway, reason: &str) -> u64 {
    gw.shared.metrics.connections_rejected.with_label_values(&[reason]).get()
}

#[tokio::test]
async fn a_foreign_origin_is_refused_on_both_transports() {
    let mut config = test_config();
    config.limits.allowed_origins = Some(vec!["https://app.example.com".into()]);
    let gw = TestGateway::start_with(config).await;
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(gw.url("/ws/location"))
            .expect("request");
    req.headers_mut().insert("origin", "https://evil.example.net".parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("WebSocket from a foreign origin was not refused: {:?}", other.map(|_| ())),
    }
    let hash = cert_hash(&gw.http("")).await;
    let endpoint = client_endpoint(&[hash["value"].as_str().expect("hash")]);
    let opts =
        ConnectOptions::builder(gw.wt_url("/wt/location")).add_header("origin", "https://evil.example.net").build();
    let refused = endpoint.connect(opts).await;
    assert!(refused.is_err(), "WebTransport from a foreign origin was not refused");
    assert_eq!(rejected(&gw, "origin"), 2, "both refusals are counted alike");
    // The allowed origin passes on both.
    let opts =
        ConnectOptions::builder(gw.wt_url("/wt/location")).add_header("origin", "https://app.example.com").build();
    assert!(endpoint.connect(opts).await.is_ok());
    gw.shutdown().await;
}

#[tokio::test]
async fn over_capacity_both_transports_close_with_1013() {
    let mut config = test_config();
    config.limits.max_connections = 1;
    let gw = TestGateway::start_with(config).await;
    let mut first = WsClient::connect(&gw.url("/ws/location")).await;
    first.subscribe("location", "v1").await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    assert_eq!(ws.closed().await.0, Some(1013));
    let hash = cert_hash(&gw.http("")).await;
    // The close may race the end of the handshake: either way it is 1013.
    let close = match common::wt::connect(&gw.wt_url("/wt/location"), &[hash["value"].as_str().expect("hash")]).await {
        Ok((_endpoint, wt)) => tokio::time::timeout(common::TIMEOUT, wt.closed()).await.expect("not closed"),
        Err(wtransport::error::ConnectingError::ConnectionError(e)) => e,
        Err(other) => panic!("unexpected connect error {other}"),
    };
    match close {
        wtransport::error::ConnectionError::ApplicationClosed(c) => assert_eq!(c.code().into_inner(), 1013),
        other => panic!("expected an application close with 1013, got {other}"),
    }
    assert_eq!(rejected(&gw, "max_connections"), 2);
    gw.shutdown().await;
}
