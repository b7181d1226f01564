//! Transports: sockets in, frames out. No business rules live here; every
//! decision is the [`crate::session::Session`]'s.

mod duplex;
pub mod sse;
pub mod ws;
pub mod wt;

pub(crate) use duplex::{Finished, duplex};

/// Now, on tokio's clock (which tests can pause and advance), as the
/// session's `std` instant.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The dependency call in flight beside a connection's socket.
pub(crate) type PendingCall = Option<futures_util::future::BoxFuture<'static, crate::session::Completion>>;

/// Waits for the call in flight (forever when there is none) and clears it;
/// a branch of the transport's `select!`, so cancelling it loses nothing.
pub(crate) async fn completion(pending: &mut PendingCall) -> crate::session::Completion {
    let Some(call) = pending.as_mut() else { return std::future::pending().await };
    let done = call.await;
    *pending = None;
    done
}

/// Starts the session's next dependency call, unless one is in flight.
pub(crate) fn start_call(
    pending: &mut PendingCall,
    session: &mut crate::session::Session,
    deps: &crate::session::Deps,
) {
    if pending.is_none()
        && let Some(call) = session.next_call()
    {
        *pending = Some(deps.start(call));
    }
}

/// The audit trail's reason for a close: code and reason.
pub(crate) fn close_reason(close: &crate::protocol::Close) -> String {
    format!("{} {}", close.code, close.reason)
}

/// Records a written batch: the publish→write latency of its oldest update
/// (one histogram observation per write, not per update: this function was
/// 1.9 % of a saturated fan-out's CPU samples), and messages out per type,
/// counted in runs so a batch costs one counter update per type.
pub(crate) fn count_written(batch: &crate::hub::Batch, shared: &crate::state::Shared, transport: &'static str) {
    let metrics = &shared.metrics;
    if let Some(at) = batch.iter().find_map(|f| f.published_at) {
        metrics.publish_to_write.observe(std::time::Instant::now().saturating_duration_since(at).as_secs_f64());
    }
    let mut run: Option<(&'static str, u64)> = None;
    for frame in batch {
        run = match run {
            Some((ty, n)) if ty == frame.ty => Some((ty, n + 1)),
            Some((ty, n)) => {
                metrics.messages_out(transport, ty, n);
                Some((frame.ty, 1))
            }
            None => Some((frame.ty, 1)),
        };
    }
    if let Some((ty, n)) = run {
        metrics.messages_out(transport, ty, n);
    }
}

/// Empties a written batch, giving back the buffer of an unusual burst.
pub(crate) fn recycle(batch: &mut crate::hub::Batch) {
    batch.clear();
    batch.shrink_to(crate::hub::BATCH_KEEP);
}
