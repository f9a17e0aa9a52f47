//! A future polled only when it asked to be: for a rare event (a drain, a connection's last
//! request) raced against a busy one (the connection) in the same task.
//!
//! Every wake-up of a connection's task (two or more per request) would otherwise poll the
//! rare event's futures again, and tokio's `Notify` and `watch` take a lock in each poll to
//! check their waiter: about 360 of a request's instructions (callgrind), for an event that
//! happens once per connection at most. No crate offers this adapter (futures-util's `Shared`
//! and `FutureExt::fuse` poll on every wake-up).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Wraps `inner` so that it is polled on the first poll and then only after it woke its task.
pub fn when_woken<F: Future>(inner: F) -> WhenWoken<F> {
    let own = Arc::new(OwnWaker {
        woken: AtomicBool::new(true),
        task: AtomicWaker::new(),
    });
    WhenWoken {
        waker: Waker::from(own.clone()),
        own,
        inner,
    }
}

/// See [`when_woken`]. `Unpin` when `F` is.
pub struct WhenWoken<F> {
    inner: F,
    own: Arc<OwnWaker>,
    /// `own` as a waker, made once.
    waker: Waker,
}

/// The waker `inner` is given: records that it fired, and wakes the task.
struct OwnWaker {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for OwnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read: a wake-up between the two polls again.
        self.own.task.register(cx.waker());
        if !self.own.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    #[tokio::test]
    async fn inner_is_polled_once_then_only_after_its_own_wake_up() {
        let polls = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(tokio::sync::Notify::new());
        let probe = {
            let (polls, notify) = (polls.clone(), notify.clone());
            Box::pin(async move {
                let notified = notify.notified();
                tokio::pin!(notified);
                std::future::poll_fn(|cx| {
                    polls.fetch_add(1, Ordering::SeqCst);
                    notified.as_mut().poll(cx)
                })
                .await
            })
        };
        let mut rare = when_woken(probe);
        // Spurious wake-ups of the task (another future of it progressing) do not poll it.
        let mut ticks = 0;
        let outcome = std::future::poll_fn(|cx| {
            if let Poll::Ready(()) = Pin::new(&mut rare).poll(cx) {
                return Poll::Ready("rare");
            }
            ticks += 1;
            if ticks == 50 {
                notify.notify_one();
            }
            if ticks > 200 {
                return Poll::Ready("never woken");
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        let outcome = tokio::time::timeout(Duration::from_secs(5), outcome)
            .await
            .unwrap();
        assert_eq!(outcome, "rare");
        // The first poll, and the one after its notification.
        assert_eq!(polls.load(Ordering::SeqCst), 2);
    }
}
