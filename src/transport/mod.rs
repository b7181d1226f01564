//! Transports: sockets in, frames out. No business rules live here; every
//! decision is the [`crate::session::Session`]'s.

pub mod ws;
pub mod wt;

/// The audit trail's reason for a close: code and reason.
pub(crate) fn close_reason(close: &crate::protocol::Close) -> String {
    format!("{} {}", close.code, close.reason)
}
