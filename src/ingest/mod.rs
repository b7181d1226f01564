//! Ways for backend services to publish updates into the gateway.

pub mod grpc;
pub mod http;
