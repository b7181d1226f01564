//! The admission gate: the one place that decides whether a connection may
//! start, for every transport. Its answer, a [`Refusal`], knows its HTTP
//! status, close code, error code, metric label and `Retry-After`; an edge
//! only maps it to its wire, so WebSocket and WebTransport (and any later
//! transport) refuse alike.
//!
//! Order: shutdown, origin, the per-IP connect rate, the token, then the
//! instance's and the user's connection slots. Refusals about capacity come
//! after the handshake, as a close code (1013, 1008): a browser cannot read
//! the status of a refused WebSocket upgrade, but it sees a close code.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use crate::auth::{AuthError, Verified};
use crate::protocol::{Close, ErrorCode};
use crate::ratelimit::Decision;
use crate::state::{Admission, Shared, UserAdmission};

/// What a connection attempt presents at the gate.
#[derive(Debug, Clone, Copy)]
pub struct Knock<'a> {
    /// The client's address (its IP is the connect-rate key).
    pub remote: IpAddr,
    /// The `Origin` a browser sent, if any.
    pub origin: Option<&'a str>,
    /// The token from `?token=` or `Authorization: Bearer`.
    pub token: Option<&'a str>,
}

/// Why a connection may not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Shutdown has begun.
    ShuttingDown,
    /// `Origin` not in `WS_ALLOWED_ORIGINS`.
    Origin,
    /// Over `WS_CONNECT_RATE_LIMIT` for this IP.
    ConnectRate {
        /// When one more attempt fits.
        retry_after: Duration,
    },
    /// No valid token.
    Unauthorized(AuthError),
    /// The instance is at `WS_MAX_CONNECTIONS`.
    Full,
    /// The user is at `WS_MAX_CONNECTIONS_PER_USER`.
    UserFull,
}

impl Refusal {
    /// The HTTP status of a refusal before the handshake.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::ShuttingDown | Self::Full => StatusCode::SERVICE_UNAVAILABLE,
            Self::Origin => StatusCode::FORBIDDEN,
            Self::ConnectRate { .. } | Self::UserFull => StatusCode::TOO_MANY_REQUESTS,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
        }
    }

    /// The close code and reason of a refusal after the handshake.
    pub fn close(&self) -> Close {
        match self {
            Self::ShuttingDown => Close::new(Close::GOING_AWAY, "server shutting down"),
            Self::Origin => Close::new(Close::POLICY, "origin not allowed"),
            Self::ConnectRate { .. } => Close::new(Close::TRY_AGAIN_LATER, "too many connection attempts"),
            Self::Unauthorized(_) => Close::new(Close::POLICY, "unauthorized"),
            Self::Full => Close::new(Close::TRY_AGAIN_LATER, "server at WS_MAX_CONNECTIONS; try again later"),
            Self::UserFull => Close::new(Close::POLICY, "too many connections for this user"),
        }
    }

    /// Whether the client learns it by a close after the handshake (the
    /// capacity refusals) rather than by an HTTP status.
    pub fn after_handshake(&self) -> bool {
        matches!(self, Self::Full | Self::UserFull)
    }

    /// The stable error code in the refusal's JSON body.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::ShuttingDown | Self::Full => ErrorCode::Unavailable,
            Self::Origin | Self::UserFull => ErrorCode::Forbidden,
            Self::ConnectRate { .. } => ErrorCode::RateLimited,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
        }
    }

    /// For people.
    pub fn message(&self) -> String {
        match self {
            Self::ShuttingDown => "shutting down; connect to another instance".into(),
            Self::Origin => "origin not in WS_ALLOWED_ORIGINS".into(),
            Self::ConnectRate { .. } => "too many connection attempts from this address".into(),
            Self::Unauthorized(e) => e.to_string(),
            Self::Full | Self::UserFull => self.close().reason.into_owned(),
        }
    }

    /// `venta_connections_rejected_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::ShuttingDown => "shutting_down",
            Self::Origin => "origin",
            Self::ConnectRate { .. } => "connect_rate",
            Self::Unauthorized(_) => "unauthorized",
            Self::Full => "max_connections",
            Self::UserFull => "max_connections_per_user",
        }
    }

    /// `Retry-After`, whole seconds rounded up (a retry at a rounded-down
    /// time would be refused again).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::ConnectRate { retry_after } => {
                Some(u64::try_from(retry_after.as_millis().div_ceil(1000)).unwrap_or(60).max(1))
            }
            Self::Full => Some(1),
            _ => None,
        }
    }
}

/// A connection that passed the gate.
pub struct Admitted {
    /// The token's verdict (`None` while auth is off).
    pub token: Option<Verified>,
    /// Held for the connection's lifetime.
    pub slots: Slots,
}

/// The instance's and the user's connection slots; released on drop.
pub struct Slots {
    _slot: Admission,
    _user_slot: Option<UserAdmission>,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admitted").field("user", &self.token.as_ref().map(|t| t.user.as_str())).finish()
    }
}

/// Decides whether a connection may start; counts every refusal.
pub fn admit(shared: &Arc<Shared>, knock: Knock<'_>) -> Result<Admitted, Refusal> {
    let verdict = judge(shared, knock);
    if let Err(refusal) = &verdict {
        shared.metrics.connections_rejected.with_label_values(&[refusal.label()]).inc();
    }
    verdict
}

fn judge(shared: &Arc<Shared>, knock: Knock<'_>) -> Result<Admitted, Refusal> {
    if shared.shutdown.is_cancelled() {
        return Err(Refusal::ShuttingDown);
    }
    if !shared.origin_allowed(knock.origin) {
        return Err(Refusal::Origin);
    }
    if let Some(limiter) = &shared.connect_limiter
        && let Decision::Deny { retry_after } = limiter.check_now(&knock.remote.to_canonical().to_string())
    {
        return Err(Refusal::ConnectRate { retry_after });
    }
    let token = shared.auth.verify(knock.token).map_err(Refusal::Unauthorized)?;
    let slot = shared.try_admit().ok_or(Refusal::Full)?;
    let user_slot = match &token {
        Some(t) => Some(shared.try_admit_user(&t.user).ok_or(Refusal::UserFull)?),
        None => None,
    };
    Ok(Admitted { token, slots: Slots { _slot: slot, _user_slot: user_slot } })
}
