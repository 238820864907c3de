//! The proxy's client connections, counted, so that a liveroll that handed
//! over to a new process knows when its last client is done.
//!
//! Pingora, once it stops accepting, runs the application's `cleanup`,
//! which for its HTTP proxy drops every keep-alive connection waiting for
//! its next request. On a shutdown that is what we want; after a handover
//! it is not: a client that sends its next request at that moment (a busy
//! keep-alive client always does, within microseconds) would see its
//! connection closed under it, and a POST cannot be resent. So after a
//! handover the cleanup is skipped: each kept-alive connection gets its
//! next request answered with `Connection: close` (Pingora does this once
//! it is stopping) and the client reconnects, to the new process. What is
//! still open when `--drain-timeout` passes is closed as the process exits.
//!
//! A connection is counted from the moment it is accepted (by the
//! admission filter, inside Pingora's accept loop), not when its task first
//! runs: otherwise one accepted just before the accept loop stops could
//! find the count at zero and the process gone. The drain therefore waits
//! for the accept loop to have stopped ([`Connections::accepting_stopped`])
//! and then for the count. Answers of the admin listener are counted too.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use tokio::sync::{watch, Notify};

use super::latch::Latch;
use crate::signals::Stop;

/// How many client connections the proxy has open.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    closed: Notify,
    /// Pingora's accept loop has ended (it then runs the app's cleanup).
    stopped: Latch,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Counts a connection just accepted; [`Tracked`] stops counting it
    /// when its task ends.
    pub fn accepted(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts something that must finish before the process exits (an
    /// admin answer) until the guard is dropped.
    pub fn track(self: &Arc<Self>) -> Open {
        self.accepted();
        Open(self.clone())
    }

    /// Waits until the proxy has stopped accepting or `deadline` passes;
    /// returns whether it has.
    pub async fn accepting_stopped(&self, deadline: tokio::time::Instant) -> bool {
        tokio::time::timeout_at(deadline, self.stopped.wait())
            .await
            .is_ok()
    }

    /// Waits until no connection is open or `deadline` passes; returns
    /// whether none is open.
    pub async fn all_closed(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            // Registered before the look, so a close in between is not missed.
            closed.as_mut().enable();
            if self.open() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.open() == 0;
            }
        }
    }
}

/// Decrements the count however the connection's task ends (also when it
/// is dropped mid-request).
pub struct Open(Arc<Connections>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// Pingora's application with its connections counted and its cleanup
/// skipped after a handover.
pub struct Tracked<A> {
    inner: Arc<A>,
    connections: Arc<Connections>,
    stop: watch::Receiver<Stop>,
}

impl<A> Tracked<A> {
    pub fn new(inner: A, connections: Arc<Connections>, stop: watch::Receiver<Stop>) -> Self {
        Tracked {
            inner: Arc::new(inner),
            connections,
            stop,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Tracked<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Counted when accepted (`admission`).
        let _open = Open(self.connections.clone());
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.connections.stopped.set();
        if *self.stop.borrow() != Stop::HandedOver {
            self.inner.cleanup().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waits_for_the_last_connection() {
        let connections = Arc::new(Connections::default());
        let soon = || tokio::time::Instant::now() + Duration::from_millis(50);
        assert!(connections.all_closed(soon()).await);
        connections.open.fetch_add(2, Ordering::AcqRel);
        let (a, b) = (Open(connections.clone()), Open(connections.clone()));
        assert!(!connections.all_closed(soon()).await);
        drop(a);
        let waiter = {
            let connections = connections.clone();
            tokio::spawn(async move {
                connections
                    .all_closed(tokio::time::Instant::now() + Duration::from_secs(30))
                    .await
            })
        };
        drop(b);
        assert!(waiter.await.unwrap());
        assert_eq!(connections.open(), 0);
    }
}
