//! A flag that is set once and wakes everyone waiting for it: the service
//! is closing (idle connections end), the accept loop has stopped (the
//! drain after a handover may count).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Default)]
pub struct Latch {
    set: AtomicBool,
    woken: Notify,
}

impl Latch {
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.woken.notify_waiters();
    }

    /// Resolves once [`Self::set`] has been called.
    pub async fn wait(&self) {
        let woken = self.woken.notified();
        tokio::pin!(woken);
        // Registered before the flag is read, so a `set` in between cannot
        // be missed.
        woken.as_mut().enable();
        if !self.set.load(Ordering::Acquire) {
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_before_and_after_the_set_all_return() {
        let latch = Arc::new(Latch::default());
        let early = tokio::spawn({
            let latch = latch.clone();
            async move { latch.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!early.is_finished());
        latch.set();
        tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .expect("a waiter from before the set returns")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), latch.wait())
            .await
            .expect("a wait after the set returns at once");
    }
}
