//! Health checks of the children that serve, every `--health-interval`: the
//! engine's decision to take a child out of rotation and replace it. (The
//! probe itself, an HTTP request, is `process::probe`.)
//!
//! What a failing probe means depends on what else the child is doing:
//!
//! - **Dead or failing**: it answers the probe with something other than
//!   200, refuses or drops the connection, or does not answer while it has
//!   nothing else to do (or has completed nothing for `--drain-timeout`
//!   while requests wait on it). After `--unhealthy-threshold` such checks
//!   in a row it is taken out of the proxy (but left running) and a
//!   replacement is started; one that then passes `--healthy-threshold`
//!   checks in a row comes back.
//! - **Overloaded**: the probe times out while the child is busy with
//!   requests that it keeps completing. Replacing it would restart the app
//!   under load and lose those requests (HAProxy would mark it down;
//!   Kubernetes keeps liveness apart from readiness). After
//!   `--unhealthy-threshold` such checks it is taken out of rotation only if
//!   another child serves, and never replaced for it; it comes back after
//!   `--healthy-threshold` passed checks, like an ejected one.
//! - **Not the child's fault**: liveroll could not even open the probe's
//!   socket (out of file descriptors or memory). Such a check counts for
//!   nothing.
//!
//! Needing several results in a row either way keeps one slow answer from
//! flapping a child in and out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::process::limits::io_exhaustion;
use crate::process::probe;
use crate::report::event::Event;
use crate::report::reporter::Reporter;
use crate::serve::backends::{Backend, BackendSet};
use crate::update::trigger::{Reason, Triggers};

/// What one check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Pass,
    Fail,
    /// No answer in time, while busy completing other requests.
    Busy,
    /// liveroll could not probe at all.
    Unknown,
}

/// Consecutive results of one backend's checks.
#[derive(Debug)]
struct Streak {
    passes: u32,
    fails: u32,
    busy: u32,
    /// Taken out of rotation for being overloaded (not replaced for it).
    shed: bool,
    /// Its response count at the last check.
    responses: u64,
    /// When it last answered anything: a probe, or a proxied request.
    progress: Instant,
}

impl Default for Streak {
    fn default() -> Self {
        Streak {
            passes: 0,
            fails: 0,
            busy: 0,
            shed: false,
            responses: 0,
            progress: Instant::now(),
        }
    }
}

/// What one check result means for a backend.
#[derive(Debug, PartialEq)]
enum Verdict {
    Keep,
    /// Out of the proxy, and replaced.
    Eject,
    /// Already out of rotation (overloaded), now failing: replace it.
    Replace,
    /// Out of rotation while another child serves; not replaced.
    Shed,
    /// Overloaded and the only child: stays (logged once).
    Overloaded,
    Recover,
}

impl Streak {
    fn record(
        &mut self,
        check: Check,
        unhealthy: bool,
        others_serving: bool,
        fall: u32,
        rise: u32,
    ) -> Verdict {
        match check {
            Check::Unknown => return Verdict::Keep,
            Check::Pass => {
                self.passes += 1;
                (self.fails, self.busy) = (0, 0);
            }
            Check::Fail => {
                self.fails += 1;
                (self.passes, self.busy) = (0, 0);
            }
            Check::Busy => {
                self.busy += 1;
                (self.passes, self.fails) = (0, 0);
            }
        }
        match (check, unhealthy) {
            (Check::Fail, false) if self.fails >= fall => Verdict::Eject,
            (Check::Fail, true) if self.shed && self.fails >= fall => {
                self.shed = false;
                Verdict::Replace
            }
            (Check::Busy, false) if self.busy >= fall && others_serving => {
                self.shed = true;
                Verdict::Shed
            }
            (Check::Busy, false) if self.busy == fall => Verdict::Overloaded,
            (Check::Pass, true) if self.passes >= rise => {
                self.shed = false;
                Verdict::Recover
            }
            _ => Verdict::Keep,
        }
    }
}

/// How a probe went.
enum Probe {
    Status(u16),
    Failed { own: bool },
    TimedOut,
}

fn classify(probe: Probe, busy: bool) -> Check {
    match probe {
        Probe::Status(200) => Check::Pass,
        Probe::Failed { own: true } => Check::Unknown,
        Probe::TimedOut if busy => Check::Busy,
        _ => Check::Fail,
    }
}

/// Runs forever (until its task is dropped at shutdown).
pub async fn run(
    config: Arc<Config>,
    backends: Arc<BackendSet>,
    triggers: Arc<Triggers>,
    reporter: Arc<Reporter>,
) {
    if config.health_interval.is_zero() {
        return;
    }
    // Not tied to the interval: a short interval must not turn a slow
    // answer into a failed check.
    let probe_timeout = Duration::from_secs(2);
    // A child that completes nothing for this long while requests wait on
    // it is hung, not busy: the longest a request is expected to take.
    let stuck_after = config.drain_timeout.max(probe_timeout);
    let mut streaks: HashMap<u64, Streak> = HashMap::new();
    let mut ticks = tokio::time::interval(config.health_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let serving = backends.all();
        streaks.retain(|generation, _| serving.iter().any(|b| b.generation == *generation));
        // Side by side, so one hung child does not delay the other's check.
        let probes: Vec<_> = serving
            .iter()
            .map(|b| {
                let (port, path) = (b.addr.port(), config.healthcheck.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(probe_timeout, probe::probe(port, &path)).await {
                        Ok(Ok(code)) => Probe::Status(code),
                        Ok(Err(e)) => Probe::Failed {
                            own: io_exhaustion(&e),
                        },
                        Err(_) => Probe::TimedOut,
                    }
                })
            })
            .collect();
        let mut results = Vec::with_capacity(probes.len());
        for probe in probes {
            results.push(probe.await.unwrap_or(Probe::Failed { own: false }));
        }
        for (backend, probe) in serving.iter().zip(results) {
            let streak = streaks.entry(backend.generation).or_default();
            let responses = backend.stats.responses();
            if responses != streak.responses || matches!(probe, Probe::Status(200)) {
                streak.progress = Instant::now();
            }
            let answering = responses != streak.responses || backend.inflight() > 0;
            streak.responses = responses;
            let busy = answering && streak.progress.elapsed() < stuck_after;
            let check = classify(probe, busy);
            if check == Check::Unknown {
                reporter.emit(Event::ProbeSkipped {
                    port: backend.addr.port(),
                });
            }
            let others = serving
                .iter()
                .any(|b| b.generation != backend.generation && !b.is_unhealthy());
            let verdict = streak.record(
                check,
                backend.is_unhealthy(),
                others,
                config.unhealthy_threshold,
                config.healthy_threshold,
            );
            act(verdict, backend, streak, &backends, &triggers, &reporter);
        }
    }
}

fn act(
    verdict: Verdict,
    backend: &Backend,
    streak: &Streak,
    backends: &BackendSet,
    triggers: &Triggers,
    reporter: &Reporter,
) {
    let port = backend.addr.port();
    match verdict {
        Verdict::Keep => {}
        Verdict::Eject => {
            reporter.emit(Event::Unhealthy {
                port,
                failed_checks: streak.fails,
            });
            backends.set_unhealthy(backend, true);
            triggers.request(Reason::Unhealthy);
        }
        Verdict::Replace => {
            reporter.emit(Event::FailingWhileShed {
                port,
                failed_checks: streak.fails,
            });
            triggers.request(Reason::Unhealthy);
        }
        Verdict::Shed | Verdict::Overloaded => {
            let shed = verdict == Verdict::Shed;
            reporter.emit(Event::Overloaded {
                port,
                busy_checks: streak.busy,
                inflight: backend.inflight(),
                shed,
            });
            if shed {
                backends.set_unhealthy(backend, true);
            }
        }
        Verdict::Recover => {
            reporter.emit(Event::Recovered {
                port,
                passed_checks: streak.passes,
            });
            backends.set_unhealthy(backend, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(s: &mut Streak, check: Check, unhealthy: bool) -> Verdict {
        s.record(check, unhealthy, false, 3, 2)
    }

    #[test]
    fn ejects_only_after_enough_failures_in_a_row() {
        let mut s = Streak::default();
        assert_eq!(record(&mut s, Check::Fail, false), Verdict::Keep);
        assert_eq!(record(&mut s, Check::Fail, false), Verdict::Keep);
        assert_eq!(
            record(&mut s, Check::Pass, false),
            Verdict::Keep,
            "a pass resets the count"
        );
        assert_eq!(record(&mut s, Check::Fail, false), Verdict::Keep);
        assert_eq!(record(&mut s, Check::Fail, false), Verdict::Keep);
        assert_eq!(record(&mut s, Check::Unknown, false), Verdict::Keep);
        assert_eq!(
            record(&mut s, Check::Fail, false),
            Verdict::Eject,
            "liveroll's own failure neither counts nor resets"
        );
    }

    #[test]
    fn recovers_only_after_enough_passes_in_a_row() {
        let mut s = Streak {
            fails: 3,
            ..Streak::default()
        };
        assert_eq!(record(&mut s, Check::Pass, true), Verdict::Keep);
        assert_eq!(
            record(&mut s, Check::Fail, true),
            Verdict::Keep,
            "a failure resets the count"
        );
        assert_eq!(record(&mut s, Check::Pass, true), Verdict::Keep);
        assert_eq!(record(&mut s, Check::Pass, true), Verdict::Recover);
    }

    #[test]
    fn a_busy_child_is_never_replaced_for_it() {
        let mut s = Streak::default();
        for _ in 0..2 {
            assert_eq!(record(&mut s, Check::Busy, false), Verdict::Keep);
        }
        assert_eq!(record(&mut s, Check::Busy, false), Verdict::Overloaded);
        for _ in 0..10 {
            assert_eq!(record(&mut s, Check::Busy, false), Verdict::Keep);
        }
        // With another child serving it leaves rotation, and comes back.
        let mut s = Streak::default();
        for _ in 0..2 {
            s.record(Check::Busy, false, true, 3, 2);
        }
        assert_eq!(s.record(Check::Busy, false, true, 3, 2), Verdict::Shed);
        assert_eq!(s.record(Check::Pass, true, true, 3, 2), Verdict::Keep);
        assert_eq!(s.record(Check::Pass, true, true, 3, 2), Verdict::Recover);
        // Shed, then failing outright: replaced.
        let mut s = Streak::default();
        for _ in 0..3 {
            s.record(Check::Busy, false, true, 3, 2);
        }
        for _ in 0..2 {
            assert_eq!(s.record(Check::Fail, true, true, 3, 2), Verdict::Keep);
        }
        assert_eq!(s.record(Check::Fail, true, true, 3, 2), Verdict::Replace);
    }

    #[test]
    fn only_a_timeout_while_busy_is_busy() {
        assert_eq!(classify(Probe::TimedOut, true), Check::Busy);
        assert_eq!(classify(Probe::TimedOut, false), Check::Fail);
        assert_eq!(classify(Probe::Status(503), true), Check::Fail);
        assert_eq!(classify(Probe::Status(200), false), Check::Pass);
        assert_eq!(classify(Probe::Failed { own: true }, false), Check::Unknown);
        assert_eq!(classify(Probe::Failed { own: false }, true), Check::Fail);
    }
}
