//! The gateway's documented defaults (README, "Configuration") that the
//! tools assume of a gateway they were not told about. Written down here
//! rather than read from the server crate, which the tools do not depend
//! on; a unit test holds them equal to the gateway's own.

/// `WEBSOCKET_GATEWAY_PORT`: HTTP, WebSocket and (by default) WebTransport.
pub const HTTP_PORT: u16 = 5006;
/// `GRPC_PORT`: the gRPC ingest API.
pub const GRPC_PORT: u16 = 5007;
/// `NATS_SUBJECT_PREFIX`.
pub const NATS_SUBJECT_PREFIX: &str = "venta";
/// `WS_MAX_CONNECTIONS`: client connections one gateway admits.
pub const MAX_CONNECTIONS: usize = 1000;
/// `WS_MAX_CONNECTIONS_PER_USER`: connections one user (token `sub`) may hold.
pub const MAX_CONNECTIONS_PER_USER: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every figure above is the gateway's: a changed default there fails here
    /// instead of making the tools assume the old one.
    #[test]
    fn the_defaults_are_the_gateways() {
        let gw = venta_gateway::Config::defaults();
        assert_eq!(HTTP_PORT, gw.server.port);
        assert_eq!(GRPC_PORT, gw.server.grpc_port);
        assert_eq!(NATS_SUBJECT_PREFIX, gw.nats.subject_prefix);
        assert_eq!(MAX_CONNECTIONS, gw.limits.max_connections);
        assert_eq!(MAX_CONNECTIONS_PER_USER, gw.limits.max_connections_per_user);
    }
}
