//! The set of healthy children the proxy may send requests to.
//!
//! The engine replaces the whole list atomically ([`ArcSwap`]); the proxy
//! only loads it and bumps a cursor, so the request path takes no lock and
//! allocates nothing. Each backend counts the requests in flight on it, which
//! is what retirement waits for before it signals the old child.
//!
//! A published backend can be passed over without being removed: for a short
//! while after a connect to it failed (passive ejection, decided by the
//! proxy), or while active health checks find it failing (decided by the
//! monitor). When no backend can be picked, requests wait for one
//! ([`BackendSet::acquire`]) instead of failing.
//!
//! Why not `pingora-load-balancing`'s `LoadBalancer`: its backends are keyed
//! by address and carry health and pooled connections across updates, but a
//! replacement child on the same port must start with neither; retirement
//! needs a per-backend count of requests in flight to drain; and a request
//! that finds no child must wait in a bounded queue rather than fail. Each
//! of these would sit beside it rather than in it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use super::stats::Stats;

/// How often a waiting request looks again even without news: passive
/// ejections end by the clock, not by a notification.
const RECHECK: Duration = Duration::from_millis(100);

/// One published child.
#[derive(Debug)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Unique per child process, never reused: keeps pooled upstream
    /// connections of an old child away from a new child on the same port.
    pub generation: u64,
    inflight: AtomicUsize,
    live: AtomicBool,
    /// Failing its health checks: not picked until it recovers.
    unhealthy: AtomicBool,
    /// Passed over until this time (nanoseconds after [`epoch`]); 0 = never.
    ejected_until: AtomicU64,
    /// What its requests looked like.
    pub stats: Stats,
    /// Someone waits for this backend to drain: the last lease wakes them.
    watched: AtomicBool,
    idle: Notify,
}

impl Backend {
    pub fn new(addr: SocketAddr, generation: u64) -> Arc<Self> {
        Arc::new(Backend {
            addr,
            generation,
            inflight: AtomicUsize::new(0),
            live: AtomicBool::new(true),
            unhealthy: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            stats: Stats::default(),
            watched: AtomicBool::new(false),
            idle: Notify::new(),
        })
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn is_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Relaxed)
    }

    /// Published, not removed, and passing its health checks: what the
    /// supervisor and `/status` call a serving child.
    pub fn is_serving(&self) -> bool {
        self.live.load(Ordering::SeqCst) && !self.is_unhealthy()
    }

    /// Whether a new request may be sent here now.
    fn eligible(&self) -> bool {
        if self.is_unhealthy() {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || now_nanos() >= until
    }

    /// Waits until no request is in flight on this backend, or `deadline`
    /// passes. Returns whether it drained.
    pub async fn drained(&self, deadline: tokio::time::Instant) -> bool {
        // Marked before looking at the count, and the last lease looks at the
        // mark after counting down: one of the two sees the other.
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.inflight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.inflight() == 0;
            }
        }
    }
}

/// A request's place among those waiting for a backend (see
/// [`BackendSet::waiter`]); counted down when dropped, also when the wait is
/// abandoned because the client left.
pub struct Waiter<'a>(&'a BackendSet);

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let set = self.0;
        if set.waiting.fetch_sub(1, Ordering::SeqCst) == 1 && set.closing.load(Ordering::SeqCst) {
            // Shutdown waits for the last answer (see `BackendSet::unanswered`).
            set.changed.notify_waiters();
        }
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
        let backend = &self.0;
        // Only a drain waits for zero, so only then is anyone woken: the
        // request path takes no lock otherwise.
        if backend.inflight.fetch_sub(1, Ordering::SeqCst) == 1
            && backend.watched.load(Ordering::SeqCst)
        {
            backend.idle.notify_waiters();
        }
    }
}

fn now_nanos() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64 + 1
}

/// A canary: while a new child bakes, only `percent` of the clients are
/// sent to it (the child of `generation`); the others stay on the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Canary {
    pub generation: u64,
    pub percent: u8,
}

/// Which side of a canary a request belongs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Canary,
    Stable,
}

/// What the proxy may use: swapped as a whole, read with one load.
#[derive(Default)]
struct Published {
    list: Vec<Arc<Backend>>,
    canary: Option<Canary>,
}

#[derive(Default)]
pub struct BackendSet {
    published: ArcSwap<Published>,
    cursor: AtomicUsize,
    /// Woken whenever a backend may have become pickable.
    changed: Notify,
    /// Requests waiting in [`acquire`](Self::acquire) now.
    waiting: AtomicUsize,
    /// Set at shutdown: nobody waits for a backend any more.
    closing: AtomicBool,
}

impl BackendSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Picks the next eligible backend round-robin, or none if none is.
    pub fn select(&self) -> Option<Lease> {
        self.select_routed(|_| Side::Stable)
    }

    /// Like [`select`](Self::select), but while a canary runs, `side` says
    /// which side this request belongs on (it is asked only then): the
    /// canary child, or the others. A side with nothing eligible falls back
    /// to the other.
    pub fn select_routed(&self, side: impl FnOnce(&Canary) -> Side) -> Option<Lease> {
        let published = self.published.load();
        let list = &published.list;
        let n = list.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let pick = |keep: &dyn Fn(&Backend) -> bool| {
            (0..n)
                .map(|i| &list[(start + i) % n])
                .filter(|backend| backend.eligible() && keep(backend))
                .find_map(Self::lease)
        };
        match published.canary {
            None => pick(&|_| true),
            Some(canary) => {
                let on_canary = side(&canary) == Side::Canary;
                pick(&|b| (b.generation == canary.generation) == on_canary)
                    .or_else(|| pick(&|_| true))
            }
        }
    }

    /// Starts or ends a canary.
    pub fn set_canary(&self, canary: Option<Canary>) {
        self.published.rcu(|p| Published {
            list: p.list.clone(),
            canary,
        });
    }

    /// The canary running now, if any.
    pub fn canary(&self) -> Option<Canary> {
        self.published.load().canary
    }

    /// A place among the requests waiting for a backend, unless `max_waiting`
    /// already wait. The place is held until the guard is dropped, which the
    /// proxy does only once it has answered, so shutdown can wait for those
    /// answers.
    pub fn waiter(&self, max_waiting: usize) -> Option<Waiter<'_>> {
        let waiter = Waiter(self);
        (self.waiting.fetch_add(1, Ordering::SeqCst) < max_waiting).then_some(waiter)
    }

    /// Like [`select`](Self::select), but waits for a backend to become
    /// available until `deadline` (or [`close`](Self::close)).
    pub async fn acquire(
        &self,
        _place: &Waiter<'_>,
        deadline: tokio::time::Instant,
    ) -> Option<Lease> {
        self.wait(deadline).await
    }

    /// Requests waiting for a backend now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// After [`close`](Self::close): waits until every waiting request has
    /// been answered, or `deadline` passes. Returns whether none is left.
    pub async fn unanswered(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.waiting() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.waiting() == 0;
            }
        }
    }

    /// Backends a request could be sent to now.
    pub fn eligible(&self) -> usize {
        self.published
            .load()
            .list
            .iter()
            .filter(|b| b.eligible())
            .count()
    }

    async fn wait(&self, deadline: tokio::time::Instant) -> Option<Lease> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a publish in between is not missed.
            changed.as_mut().enable();
            if let Some(lease) = self.select() {
                return Some(lease);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline || self.closing.load(Ordering::SeqCst) {
                return None;
            }
            let _ = tokio::time::timeout_at(deadline.min(now + RECHECK), changed).await;
        }
    }

    /// Counts the request in first, then checks the backend is still live: with
    /// `remove` doing the opposite (mark dead, then read the count), either the
    /// request sees the removal or the remover sees the request.
    fn lease(backend: &Arc<Backend>) -> Option<Lease> {
        backend.inflight.fetch_add(1, Ordering::SeqCst);
        let lease = Lease(backend.clone());
        backend.live.load(Ordering::SeqCst).then_some(lease)
    }

    /// Adds a backend, or puts one that was removed back (a rollback to a
    /// child kept warm); new requests may go to it at once.
    pub fn publish(&self, backend: Arc<Backend>) {
        backend.watched.store(false, Ordering::SeqCst);
        backend.live.store(true, Ordering::SeqCst);
        self.published.rcu(|p| {
            let mut list = p.list.clone();
            if !list.iter().any(|b| Arc::ptr_eq(b, &backend)) {
                list.push(backend.clone());
            }
            Published {
                list,
                canary: p.canary,
            }
        });
        self.changed.notify_waiters();
    }

    /// Passes `backend` over for `period` (a connect to it just failed).
    pub fn eject(&self, backend: &Backend, period: Duration) {
        let until = now_nanos() + period.as_nanos() as u64;
        backend.ejected_until.store(until, Ordering::Relaxed);
    }

    /// Marks a backend as failing (or passing again) its health checks.
    pub fn set_unhealthy(&self, backend: &Backend, unhealthy: bool) {
        backend.unhealthy.store(unhealthy, Ordering::Relaxed);
        if !unhealthy {
            self.changed.notify_waiters();
        }
    }

    /// Removes a backend so no new request picks it; requests already on it
    /// continue (see [`Backend::drained`]). Removing twice is harmless.
    pub fn remove(&self, generation: u64) -> Option<Arc<Backend>> {
        let mut removed = None;
        self.published.rcu(|p| {
            let (gone, kept): (Vec<_>, Vec<_>) = p
                .list
                .iter()
                .cloned()
                .partition(|b| b.generation == generation);
            removed = gone.into_iter().next();
            Published {
                list: kept,
                // A canary ends with its child.
                canary: p.canary.filter(|c| c.generation != generation),
            }
        });
        if let Some(backend) = &removed {
            backend.live.store(false, Ordering::SeqCst);
            self.changed.notify_waiters();
        }
        removed
    }

    /// Shutdown: requests waiting for a backend get their answer (503) now
    /// instead of when liveroll is gone.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// The backends new requests may be sent to (health checks, metrics).
    pub fn all(&self) -> Vec<Arc<Backend>> {
        self.published.load().list.to_vec()
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
        assert!(BackendSet::new().select().is_none());
    }

    #[test]
    fn round_robin_alternates() {
        let set = BackendSet::new();
        set.publish(Backend::new(addr(1), 1));
        set.publish(Backend::new(addr(2), 2));
        let picks: Vec<u64> = (0..4)
            .map(|_| set.select().unwrap().backend().generation)
            .collect();
        assert_eq!(picks[0], picks[2]);
        assert_eq!(picks[1], picks[3]);
        assert_ne!(picks[0], picks[1]);
    }

    #[test]
    fn ejected_and_unhealthy_backends_are_passed_over() {
        let set = BackendSet::new();
        let one = Backend::new(addr(1), 1);
        let two = Backend::new(addr(2), 2);
        set.publish(one.clone());
        set.publish(two.clone());
        set.eject(&one, Duration::from_secs(3600));
        for _ in 0..4 {
            assert_eq!(set.select().unwrap().backend().generation, 2);
        }
        set.set_unhealthy(&two, true);
        assert!(set.select().is_none(), "nothing eligible");
        set.set_unhealthy(&two, false);
        assert_eq!(set.select().unwrap().backend().generation, 2);
        set.eject(&one, Duration::ZERO);
        let picks: Vec<u64> = (0..2)
            .map(|_| set.select().unwrap().backend().generation)
            .collect();
        assert!(picks.contains(&1), "an ejection ends: {picks:?}");
    }

    #[tokio::test]
    async fn acquire_waits_for_a_publish() {
        let set = Arc::new(BackendSet::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let waiter = tokio::spawn({
            let set = set.clone();
            async move {
                let place = set.waiter(10).unwrap();
                set.acquire(&place, deadline)
                    .await
                    .map(|l| l.backend().generation)
            }
        });
        tokio::task::yield_now().await;
        set.publish(Backend::new(addr(1), 9));
        assert_eq!(waiter.await.unwrap(), Some(9));
    }

    #[tokio::test]
    async fn acquire_gives_up_at_the_deadline() {
        let set = BackendSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
        let place = set.waiter(10).unwrap();
        assert!(set.acquire(&place, deadline).await.is_none());
        assert_eq!(set.waiting(), 1, "counted until the answer is given");
        drop(place);
        assert_eq!(set.waiting(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_is_no_longer_counted() {
        let set = BackendSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        let gave_up = tokio::time::timeout(Duration::from_millis(20), async {
            let place = set.waiter(10).unwrap();
            set.acquire(&place, deadline).await
        })
        .await;
        assert!(gave_up.is_err());
        assert_eq!(set.waiting(), 0);
    }

    #[tokio::test]
    async fn close_ends_every_wait() {
        let set = Arc::new(BackendSet::new());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
        let waiter = tokio::spawn({
            let set = set.clone();
            async move {
                let place = set.waiter(10).unwrap();
                set.acquire(&place, deadline).await.is_none()
            }
        });
        tokio::task::yield_now().await;
        set.close();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn acquire_refuses_to_wait_past_the_limit() {
        let set = BackendSet::new();
        assert!(set.waiter(0).is_none());
        let first = set.waiter(1).unwrap();
        assert!(set.waiter(1).is_none(), "one place only");
        drop(first);
        assert!(set.waiter(1).is_some());
    }

    #[test]
    fn a_canary_gets_only_its_side_and_ends_with_its_child() {
        let set = BackendSet::new();
        set.publish(Backend::new(addr(1), 1));
        set.publish(Backend::new(addr(2), 2));
        set.set_canary(Some(Canary {
            generation: 2,
            percent: 10,
        }));
        let route = |side| {
            move |c: &Canary| {
                assert_eq!(c.percent, 10);
                side
            }
        };
        for _ in 0..4 {
            assert_eq!(
                set.select_routed(route(Side::Canary))
                    .unwrap()
                    .backend()
                    .generation,
                2
            );
            assert_eq!(
                set.select_routed(route(Side::Stable))
                    .unwrap()
                    .backend()
                    .generation,
                1
            );
        }
        // A side with nothing eligible falls back to the other.
        set.set_unhealthy(&set.all()[1], true);
        assert_eq!(
            set.select_routed(route(Side::Canary))
                .unwrap()
                .backend()
                .generation,
            1
        );
        set.remove(2);
        assert_eq!(set.canary(), None);
    }

    #[test]
    fn a_removed_backend_can_be_published_again() {
        let set = BackendSet::new();
        let backend = Backend::new(addr(1), 1);
        set.publish(backend.clone());
        let lease = set.select().unwrap();
        set.remove(1);
        assert!(set.select().is_none());
        set.publish(backend.clone());
        set.publish(backend.clone());
        assert_eq!(set.all().len(), 1, "published once");
        assert_eq!(set.select().unwrap().backend().generation, 1);
        drop(lease);
        assert_eq!(backend.inflight(), 0);
    }

    #[test]
    fn leases_count_in_flight_requests() {
        let set = BackendSet::new();
        let backend = Backend::new(addr(1), 7);
        set.publish(backend.clone());
        let a = set.select().unwrap();
        let b = set.select().unwrap();
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
            assert_eq!(set.select().unwrap().backend().generation, 2);
        }
        assert_eq!(backend.inflight(), 0);
        assert_eq!(set.all().len(), 1);
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_lease() {
        let set = Arc::new(BackendSet::new());
        let backend = Backend::new(addr(1), 1);
        set.publish(backend.clone());
        let lease = set.select().unwrap();
        set.remove(1);
        let soon = tokio::time::Instant::now() + Duration::from_millis(30);
        assert!(!backend.drained(soon).await);
        let release = tokio::spawn(async move { drop(lease) });
        let later = tokio::time::Instant::now() + Duration::from_secs(30);
        assert!(backend.drained(later).await);
        release.await.unwrap();
    }

    #[tokio::test]
    async fn a_published_backend_drains_too() {
        // Shutdown drains backends that are still in the list.
        let set = Arc::new(BackendSet::new());
        let backend = Backend::new(addr(1), 1);
        set.publish(backend.clone());
        let lease = set.select().unwrap();
        let release = tokio::spawn(async move { drop(lease) });
        let later = tokio::time::Instant::now() + Duration::from_secs(30);
        assert!(backend.drained(later).await);
        release.await.unwrap();
    }

    #[tokio::test]
    async fn unanswered_waits_for_the_last_waiter_after_close() {
        let set = Arc::new(BackendSet::new());
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let waiter = tokio::spawn({
            let set = set.clone();
            async move {
                let place = set.waiter(10).unwrap();
                assert!(set.acquire(&place, far).await.is_none());
                // Answering takes a moment; the place is held until then.
                tokio::task::yield_now().await;
                drop(place);
            }
        });
        while set.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        set.close();
        assert!(set.unanswered(far).await);
        waiter.await.unwrap();
    }
}
