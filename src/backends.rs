//! The set of healthy children the proxy may send requests to.
//!
//! The supervisor replaces the whole list atomically ([`ArcSwap`]); the proxy
//! only loads it and bumps a cursor, so the request path takes no lock and
//! allocates nothing. Each backend counts the requests in flight on it, which
//! is what retirement waits for before it signals the old child.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

/// One published child.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Unique per child process, never reused: keeps pooled upstream
    /// connections of an old child away from a new child on the same port.
    pub generation: u64,
    inflight: AtomicUsize,
    live: AtomicBool,
}

impl Backend {
    pub fn new(addr: SocketAddr, generation: u64) -> Arc<Self> {
        Arc::new(Backend {
            addr,
            generation,
            inflight: AtomicUsize::new(0),
            live: AtomicBool::new(true),
        })
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Waits until no request is in flight on this backend, or `timeout` passes.
    /// Returns whether it drained.
    pub async fn drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.inflight() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }
}

/// A request's claim on a backend; the in-flight count drops with it.
#[derive(Debug)]
pub struct Lease(Arc<Backend>);

impl Lease {
    pub fn backend(&self) -> &Backend {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
pub struct BackendSet {
    list: ArcSwap<Vec<Arc<Backend>>>,
    cursor: AtomicUsize,
}

impl BackendSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.list.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Picks the next backend round-robin, skipping `avoid` (the generation that
    /// just failed) whenever another one exists.
    pub fn select(&self, avoid: Option<u64>) -> Option<Lease> {
        let list = self.list.load();
        let n = list.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for i in 0..n {
            let backend = &list[(start + i) % n];
            if Some(backend.generation) == avoid {
                fallback = Some(backend);
                continue;
            }
            if let Some(lease) = Self::lease(backend) {
                return Some(lease);
            }
        }
        fallback.and_then(Self::lease)
    }

    /// Counts the request in first, then checks the backend is still live: with
    /// `remove` doing the opposite (mark dead, then read the count), either the
    /// request sees the removal or the remover sees the request.
    fn lease(backend: &Arc<Backend>) -> Option<Lease> {
        backend.inflight.fetch_add(1, Ordering::SeqCst);
        let lease = Lease(backend.clone());
        backend.live.load(Ordering::SeqCst).then_some(lease)
    }

    /// Adds a backend; new requests may go to it at once.
    pub fn publish(&self, backend: Arc<Backend>) {
        self.list.rcu(|list| {
            let mut next = Vec::clone(list);
            next.push(backend.clone());
            next
        });
    }

    /// Removes a backend so no new request picks it; requests already on it
    /// continue (see [`Backend::drained`]). Removing twice is harmless.
    pub fn remove(&self, generation: u64) -> Option<Arc<Backend>> {
        let mut removed = None;
        self.list.rcu(|list| {
            let (gone, kept): (Vec<_>, Vec<_>) = list
                .iter()
                .cloned()
                .partition(|b| b.generation == generation);
            removed = gone.into_iter().next();
            kept
        });
        if let Some(backend) = &removed {
            backend.live.store(false, Ordering::SeqCst);
        }
        removed
    }

    /// Every published backend, for shutdown's drain.
    pub fn all(&self) -> Vec<Arc<Backend>> {
        self.list.load().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn empty_set_selects_nothing() {
        assert!(BackendSet::new().select(None).is_none());
    }

    #[test]
    fn round_robin_alternates() {
        let set = BackendSet::new();
        set.publish(Backend::new(addr(1), 1));
        set.publish(Backend::new(addr(2), 2));
        let picks: Vec<u64> = (0..4)
            .map(|_| set.select(None).unwrap().backend().generation)
            .collect();
        assert_eq!(picks[0], picks[2]);
        assert_eq!(picks[1], picks[3]);
        assert_ne!(picks[0], picks[1]);
    }

    #[test]
    fn avoided_backend_is_skipped_unless_alone() {
        let set = BackendSet::new();
        set.publish(Backend::new(addr(1), 1));
        for _ in 0..3 {
            assert_eq!(set.select(Some(1)).unwrap().backend().generation, 1);
        }
        set.publish(Backend::new(addr(2), 2));
        for _ in 0..5 {
            assert_eq!(set.select(Some(1)).unwrap().backend().generation, 2);
        }
    }

    #[test]
    fn leases_count_in_flight_requests() {
        let set = BackendSet::new();
        let backend = Backend::new(addr(1), 7);
        set.publish(backend.clone());
        let a = set.select(None).unwrap();
        let b = set.select(None).unwrap();
        assert_eq!(backend.inflight(), 2);
        drop(a);
        assert_eq!(backend.inflight(), 1);
        drop(b);
        assert_eq!(backend.inflight(), 0);
    }

    #[test]
    fn removed_backend_is_never_selected_again() {
        let set = BackendSet::new();
        let backend = Backend::new(addr(1), 1);
        set.publish(backend.clone());
        set.publish(Backend::new(addr(2), 2));
        assert_eq!(set.remove(1).unwrap().generation, 1);
        assert!(set.remove(1).is_none());
        for _ in 0..4 {
            assert_eq!(set.select(None).unwrap().backend().generation, 2);
        }
        assert_eq!(backend.inflight(), 0);
        assert_eq!(set.len(), 1);
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_lease() {
        let set = Arc::new(BackendSet::new());
        let backend = Backend::new(addr(1), 1);
        set.publish(backend.clone());
        let lease = set.select(None).unwrap();
        set.remove(1);
        assert!(!backend.drained(Duration::from_millis(30)).await);
        let release = tokio::spawn(async move { drop(lease) });
        assert!(backend.drained(Duration::from_secs(30)).await);
        release.await.unwrap();
    }
}
