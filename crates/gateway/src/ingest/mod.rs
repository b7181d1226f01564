//! Ways for backend services to publish updates into the gateway.

pub mod codec;
pub mod grpc;
pub mod http;

use crate::config::AuthConfig;

/// Ingest is misconfigured for this environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestConfigError {
    /// Production with open ingest: anyone reaching the HTTP or gRPC port
    /// could publish positions for every vendor.
    #[error(
        "GATEWAY_ENV=production requires INGEST_TOKEN (the bearer token for POST /api/v1/publish/* and gRPC ingest): \
         without it anyone who reaches the gateway can publish"
    )]
    ProductionWithoutToken,
}

impl IngestConfigError {
    /// A configuration error (the binary exits 2), not a runtime failure.
    pub fn is_config(&self) -> bool {
        true
    }
}

/// The ingest bearer token, if one is configured. An empty `INGEST_TOKEN=`
/// (as container files write for an unset variable) counts as none: it
/// must never match an empty bearer.
pub fn token(config: &AuthConfig) -> Option<&str> {
    config.ingest_token.as_deref().filter(|t| !t.is_empty())
}

/// Refuses open ingest in production; in development says once, loudly,
/// that anyone may publish.
pub fn check_config(config: &AuthConfig) -> Result<(), IngestConfigError> {
    if token(config).is_some() {
        return Ok(());
    }
    if config.is_production() {
        return Err(IngestConfigError::ProductionWithoutToken);
    }
    tracing::warn!(
        "INGEST IS OPEN: no INGEST_TOKEN; anyone who reaches the HTTP port (POST /api/v1/publish/*) or the gRPC port \
         can publish updates. Set INGEST_TOKEN (required with GATEWAY_ENV=production)"
    );
    Ok(())
}

/// Compares secrets without an early exit, so timing does not leak a prefix.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request presenting `given` may publish: always when no token
/// is configured, else only with the same token.
pub(crate) fn authorized(config: &AuthConfig, given: Option<&str>) -> bool {
    match token(config) {
        None => true,
        Some(expected) => given.is_some_and(|g| constant_time_eq(g.as_bytes(), expected.as_bytes())),
    }
}
