//! `--max-connections`: client connections open at once. Pingora has no
//! such limit (its accept loop only pauses on `EMFILE`); its
//! `connection_filter` feature awaits a filter right after `accept()`, and
//! [`Admission`] waits there for a free slot, so further connections stay
//! in the kernel's listen backlog until one closes.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use log::{info, warn};
use pingora_core::listeners::ConnectionFilter;
use tokio::sync::Notify;

use super::connections::Connections;

/// `--max-connections`: client connections open at once.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    open: AtomicUsize,
    freed: Notify,
    /// At the limit now (logged once per episode).
    full: AtomicBool,
}

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            open: AtomicUsize::new(0),
            freed: Notify::new(),
            full: AtomicBool::new(false),
        })
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a slot, waiting for one to be freed if all are taken.
    pub async fn take(&self) {
        if self.open.fetch_add(1, Ordering::AcqRel) < self.max {
            return;
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        // Full: wait, registered before looking again so no release is missed.
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.open.fetch_add(1, Ordering::AcqRel) < self.max {
                return;
            }
            self.open.fetch_sub(1, Ordering::AcqRel);
            if !self.full.swap(true, Ordering::Relaxed) {
                warn!(
                    "event=connection_limit max_connections={} \
                     action=\"new connections wait in the listen backlog\"",
                    self.max
                );
            }
            freed.await;
        }
    }

    pub fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        if self.full.swap(false, Ordering::Relaxed) {
            info!("event=connection_limit_lifted max_connections={}", self.max);
        }
        self.freed.notify_one();
    }
}

/// Gives a connection's slot back when dropped (when its
/// `connection::Edge::process_new` ends).
pub struct Slot<'a>(pub &'a Slots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The proxy service's connection filter: Pingora awaits it in its accept
/// loop right after `accept()`, so while it waits for a slot no further
/// connection is accepted and the kernel keeps them in the listen backlog.
/// It also counts the connection for the drain after a handover, before
/// the connection's task exists (see `connections`).
pub struct Admission {
    pub slots: Arc<Slots>,
    pub connections: Arc<Connections>,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ConnectionFilter for Admission {
    async fn should_accept(&self, _addr: Option<&std::net::SocketAddr>) -> bool {
        self.slots.take().await;
        self.connections.accepted();
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_full_set_of_slots_waits_for_a_release() {
        let slots = Slots::new(1);
        slots.take().await;
        let waiting = tokio::spawn({
            let slots = slots.clone();
            async move { slots.take().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a second slot was given");
        slots.release();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the waiter got the freed slot")
            .unwrap();
        assert_eq!(slots.open(), 1);
    }
}
