//! Health checks of the children that serve, every `--health-interval`: the
//! engine's decision to take a child out of rotation and replace it. (The
//! probe itself, an HTTP request, is `process::probe`.)
//!
//! A child that fails `--unhealthy-threshold` checks in a row is taken out
//! of the proxy (but left running) and an update is requested to
//! replace it; one that then passes `--healthy-threshold` checks in a row
//! comes back. Needing several results in a row either way keeps one slow
//! answer from flapping a child in and out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::process::probe;
use crate::report::event::Event;
use crate::report::reporter::Reporter;
use crate::serve::backends::BackendSet;
use crate::update::trigger::{Reason, Triggers};

/// Consecutive results of one backend's checks.
#[derive(Default, Debug, PartialEq)]
struct Streak {
    passes: u32,
    fails: u32,
}

/// What one check result means for a backend.
#[derive(Debug, PartialEq)]
enum Verdict {
    Keep,
    Eject,
    Recover,
}

impl Streak {
    fn record(&mut self, passed: bool, unhealthy: bool, fall: u32, rise: u32) -> Verdict {
        if passed {
            self.passes += 1;
            self.fails = 0;
        } else {
            self.fails += 1;
            self.passes = 0;
        }
        match (unhealthy, passed) {
            (false, false) if self.fails >= fall => Verdict::Eject,
            (true, true) if self.passes >= rise => Verdict::Recover,
            _ => Verdict::Keep,
        }
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
                    let result =
                        tokio::time::timeout(probe_timeout, probe::probe(port, &path)).await;
                    matches!(result, Ok(Ok(200)))
                })
            })
            .collect();
        let mut results = Vec::with_capacity(probes.len());
        for probe in probes {
            results.push(probe.await.unwrap_or(false));
        }
        for (backend, passed) in serving.iter().zip(results) {
            let streak = streaks.entry(backend.generation).or_default();
            let port = backend.addr.port();
            match streak.record(
                passed,
                backend.is_unhealthy(),
                config.unhealthy_threshold,
                config.healthy_threshold,
            ) {
                Verdict::Keep => {}
                Verdict::Eject => {
                    reporter.emit(Event::Unhealthy {
                        port,
                        failed_checks: streak.fails,
                    });
                    backends.set_unhealthy(backend, true);
                    triggers.request(Reason::Unhealthy);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_only_after_enough_failures_in_a_row() {
        let mut s = Streak::default();
        assert_eq!(s.record(false, false, 3, 2), Verdict::Keep);
        assert_eq!(s.record(false, false, 3, 2), Verdict::Keep);
        assert_eq!(
            s.record(true, false, 3, 2),
            Verdict::Keep,
            "a pass resets the count"
        );
        assert_eq!(s.record(false, false, 3, 2), Verdict::Keep);
        assert_eq!(s.record(false, false, 3, 2), Verdict::Keep);
        assert_eq!(s.record(false, false, 3, 2), Verdict::Eject);
    }

    #[test]
    fn recovers_only_after_enough_passes_in_a_row() {
        let mut s = Streak {
            passes: 0,
            fails: 3,
        };
        assert_eq!(s.record(true, true, 3, 2), Verdict::Keep);
        assert_eq!(
            s.record(false, true, 3, 2),
            Verdict::Keep,
            "a failure resets the count"
        );
        assert_eq!(s.record(true, true, 3, 2), Verdict::Keep);
        assert_eq!(s.record(true, true, 3, 2), Verdict::Recover);
    }
}
