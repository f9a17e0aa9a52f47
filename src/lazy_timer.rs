//! A timer for a deadline that moves on often (every frame, every request) but seldom fires.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

/// Allocated on the first wait only, and moved later only when it fires early: moving the
/// deadline costs nothing but the caller's clock read, not a timer-wheel update.
#[derive(Default)]
pub struct LazyTimer(Option<Pin<Box<Sleep>>>);

impl LazyTimer {
    /// Ready once `deadline` has passed; until then, wakes the task at the latest then.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let timer = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        loop {
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if timer.deadline() >= deadline {
                return Poll::Ready(());
            }
            // Fired for an earlier deadline: wait for this one.
            timer.as_mut().reset(deadline);
        }
    }
}
