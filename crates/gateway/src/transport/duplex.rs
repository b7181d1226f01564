//! One task for a connection's writer and reader, polling the reader only
//! when something it waits on woke it.
//!
//! A `select!` over both polls every branch on every wake-up. The writer is
//! woken once per delivered update, the reader almost never (a client
//! message, a timer, shutdown), yet each delivery also walked the reader's
//! whole stack (over WebSocket: tungstenite, axum's wrapper, hyper's
//! upgraded IO, the socket's readiness), its timer and the shutdown token:
//! part of the 1.9 µs per delivery an S3 profile put above the yardstick,
//! and 8 % of the gateway's CPU per S3 delivery when removed. Here the
//! reader gets a waker of its own that marks it due; a second task per
//! connection would cost more memory than this one small allocation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Which side finished first.
pub(crate) enum Finished<W, R> {
    /// The writer ended.
    Writer(W),
    /// The reader ended.
    Reader(R),
}

/// The reader's waker: marks it due and wakes the connection's task.
#[derive(Default)]
struct ReaderWake {
    due: AtomicBool,
    task: AtomicWaker,
}

impl Wake for ReaderWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.due.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Runs `writer` and `reader` until either finishes; the other is left as
/// it is (the caller may keep driving the writer to flush a close).
pub(crate) fn duplex<'a, W: Future + ?Sized, R: Future + ?Sized>(
    writer: Pin<&'a mut W>,
    reader: Pin<&'a mut R>,
) -> Duplex<'a, W, R> {
    let wake = Arc::new(ReaderWake::default());
    // Due at first: the reader has not registered anything yet.
    wake.due.store(true, Ordering::Relaxed);
    Duplex { writer, reader, wake }
}

/// See [`duplex`].
pub(crate) struct Duplex<'a, W: Future + ?Sized, R: Future + ?Sized> {
    writer: Pin<&'a mut W>,
    reader: Pin<&'a mut R>,
    wake: Arc<ReaderWake>,
}

impl<W: Future + ?Sized, R: Future + ?Sized> Future for Duplex<'_, W, R> {
    type Output = Finished<W::Output, R::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(out) = this.writer.as_mut().poll(cx) {
            return Poll::Ready(Finished::Writer(out));
        }
        // Registered before the flag is read: a wake-up in between finds
        // this task's waker and polls again.
        this.wake.task.register(cx.waker());
        if this.wake.due.swap(false, Ordering::AcqRel) {
            let waker = Waker::from(Arc::clone(&this.wake));
            if let Poll::Ready(out) = this.reader.as_mut().poll(&mut Context::from_waker(&waker)) {
                return Poll::Ready(Finished::Reader(out));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `open` is set.
    struct Probe<'a> {
        polls: &'a AtomicUsize,
        open: &'a AtomicBool,
        waker: &'a parking_lot::Mutex<Option<Waker>>,
    }

    impl Future for Probe<'_> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.open.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *self.waker.lock() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_reader_is_polled_only_when_its_own_waker_fired() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let writes = Arc::new(AtomicUsize::new(0));
        let (w, n) = (Arc::clone(&writes), Arc::clone(&notify));
        let writer = async move {
            for _ in 0..5 {
                n.notified().await;
                w.fetch_add(1, Ordering::Relaxed);
            }
            "writer done"
        };
        let (polls, open, slot) = (AtomicUsize::new(0), AtomicBool::new(false), parking_lot::Mutex::new(None));
        let reader = Probe { polls: &polls, open: &open, waker: &slot };
        tokio::pin!(writer);
        tokio::pin!(reader);
        let mut both = duplex(writer.as_mut(), reader.as_mut());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut both).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1, "polled once at the start");
        for i in 1..=4 {
            notify.notify_one();
            assert!(Pin::new(&mut both).poll(&mut cx).is_pending());
            assert_eq!(writes.load(Ordering::Relaxed), i);
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1, "writer wake-ups leave the reader alone");
        open.store(true, Ordering::Relaxed);
        let reader_waker = slot.lock().take();
        assert!(reader_waker.is_some(), "the reader registered a waker");
        reader_waker.into_iter().for_each(Waker::wake);
        assert!(matches!(Pin::new(&mut both).poll(&mut cx), Poll::Ready(Finished::Reader(()))));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        drop(both);
        // The writer goes on after the reader ended.
        notify.notify_one();
        assert_eq!(writer.await, "writer done");
    }
}
