//! What starts an update, and how triggers that pile up are merged.
//!
//! Triggers never wait for the supervisor: a signal handler or timer only
//! records the trigger. While an update runs, everything that arrives is
//! coalesced into a single pending one, forced if any of them was.

use std::fmt;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Startup,
    Interval,
    /// SIGHUP: restart even if the ID is unchanged.
    Sighup,
    /// A serving child exited on its own (its replacement is due).
    ChildExited,
    /// A serving child failed its health checks.
    Unhealthy,
    /// An operator asked for a rollover (`POST /rollover`, `liveroll ctl`):
    /// forced like SIGHUP, but not a systemd reload.
    Admin,
}

impl Reason {
    /// A forced update starts a new child even when the ID has not changed.
    /// After a crash or an ejection nothing serves that ID any more, so
    /// those updates go ahead without being forced; forcing them would
    /// restart a child that has meanwhile recovered or been replaced.
    pub fn forced(self) -> bool {
        matches!(self, Reason::Startup | Reason::Sighup | Reason::Admin)
    }

    /// Which of two merged triggers names the update: a forced one, then a
    /// replacement, then an interval tick. A replacement must not hide
    /// behind a tick that was pending (a paused liveroll skips the ticks).
    fn rank(self) -> u8 {
        match self {
            _ if self.forced() => 2,
            Reason::ChildExited | Reason::Unhealthy => 1,
            _ => 0,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Startup => "startup",
            Reason::Interval => "interval",
            Reason::Sighup => "sighup",
            Reason::ChildExited => "child-exit",
            Reason::Unhealthy => "unhealthy",
            Reason::Admin => "admin",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trigger {
    pub reason: Reason,
    pub forced: bool,
    /// A SIGHUP is among the merged triggers: systemd waits for READY=1
    /// after this update.
    pub reload: bool,
}

impl Trigger {
    fn merge(pending: Option<Trigger>, reason: Reason) -> Trigger {
        let reload = reason == Reason::Sighup || pending.is_some_and(|p| p.reload);
        let mut merged = match pending {
            Some(prev) if prev.reason.rank() >= reason.rank() => prev,
            _ => Trigger {
                reason,
                forced: reason.forced(),
                reload,
            },
        };
        merged.reload = reload;
        merged
    }
}

#[derive(Default)]
pub struct Triggers {
    pending: Mutex<Option<Trigger>>,
    notify: Notify,
}

impl Triggers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a trigger; returns at once.
    pub fn request(&self, reason: Reason) {
        let mut pending = self.pending.lock().unwrap();
        *pending = Some(Trigger::merge(*pending, reason));
        drop(pending);
        self.notify.notify_one();
    }

    /// Waits for the next (merged) trigger. Until `hold_until` passes (the
    /// back-off) only a forced one is handed out; others stay pending, merged.
    pub async fn next(&self, hold_until: Option<Instant>) -> Trigger {
        loop {
            let held = hold_until.filter(|&until| until > Instant::now());
            {
                let mut pending = self.pending.lock().unwrap();
                if pending.is_some_and(|t| held.is_none() || t.forced) {
                    return pending.take().expect("just checked");
                }
            }
            match held {
                Some(until) => tokio::select! {
                    _ = self.notify.notified() => {}
                    _ = tokio::time::sleep_until(until) => {}
                },
                None => self.notify.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn merged(reasons: &[Reason]) -> Trigger {
        reasons
            .iter()
            .fold(None, |p, &r| Some(Trigger::merge(p, r)))
            .unwrap()
    }

    #[test]
    fn forced_wins_whatever_the_order() {
        use Reason::*;
        let t = |reason, forced, reload| Trigger {
            reason,
            forced,
            reload,
        };
        assert_eq!(merged(&[Interval, Sighup, Interval]), t(Sighup, true, true));
        assert_eq!(merged(&[Sighup, Interval]), t(Sighup, true, true));
        assert_eq!(merged(&[Interval, Interval]), t(Interval, false, false));
        assert_eq!(merged(&[Unhealthy, Interval]), t(Unhealthy, false, false));
        assert_eq!(merged(&[ChildExited, Sighup]), t(Sighup, true, true));
        // The reload survives a merge into an earlier forced trigger.
        assert_eq!(merged(&[Startup, Sighup]), t(Startup, true, true));
        // An operator's rollover is forced, but no reload for systemd.
        assert_eq!(merged(&[Interval, Admin]), t(Admin, true, false));
        assert_eq!(merged(&[Admin, Sighup]), t(Admin, true, true));
        // A replacement is not hidden behind an interval tick that was
        // pending: a paused liveroll skips interval updates, not these.
        assert_eq!(
            merged(&[Interval, ChildExited]),
            t(ChildExited, false, false)
        );
        assert_eq!(
            merged(&[Interval, Unhealthy, Interval]),
            t(Unhealthy, false, false)
        );
    }

    #[tokio::test]
    async fn many_requests_make_one_trigger() {
        let triggers = Triggers::new();
        for _ in 0..10 {
            triggers.request(Reason::Interval);
        }
        triggers.request(Reason::Sighup);
        let next = triggers.next(None).await;
        assert_eq!(
            (next.reason, next.forced, next.reload),
            (Reason::Sighup, true, true)
        );
        // Nothing more is pending.
        let again = tokio::time::timeout(Duration::from_millis(50), triggers.next(None)).await;
        assert!(again.is_err());
    }

    #[tokio::test]
    async fn next_wakes_on_a_later_request() {
        let triggers = std::sync::Arc::new(Triggers::new());
        let waiter = tokio::spawn({
            let triggers = triggers.clone();
            async move { triggers.next(None).await }
        });
        tokio::task::yield_now().await;
        triggers.request(Reason::Interval);
        assert_eq!(waiter.await.unwrap().reason, Reason::Interval);
    }

    #[tokio::test]
    async fn a_held_trigger_waits_for_the_deadline_but_a_reload_does_not() {
        let triggers = Triggers::new();
        triggers.request(Reason::ChildExited);
        let far = Instant::now() + Duration::from_secs(3600);
        let held = tokio::time::timeout(Duration::from_millis(50), triggers.next(Some(far))).await;
        assert!(held.is_err(), "held back");
        triggers.request(Reason::Sighup);
        let next = triggers.next(Some(far)).await;
        assert_eq!((next.reason, next.reload), (Reason::Sighup, true));

        triggers.request(Reason::Interval);
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(triggers.next(Some(soon)).await.reason, Reason::Interval);

        // An operator's rollover does not wait out the back-off either.
        triggers.request(Reason::ChildExited);
        triggers.request(Reason::Admin);
        let next = triggers.next(Some(far)).await;
        assert_eq!((next.reason, next.forced), (Reason::Admin, true));
    }
}
