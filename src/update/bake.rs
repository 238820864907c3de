//! The bake window's rules: whether a new child, judged on its live traffic
//! so far, is worse than the previous one was.
//!
//! - **Errors**: once the new child has answered `--rollback-min-requests`,
//!   its share of 5xx responses and upstream errors is above
//!   `--rollback-error-rate` and above the previous child's share over its
//!   last minutes (with too little traffic there, the rate alone decides).
//! - **Latency**: with enough requests on both, the new child's p99 time to
//!   the response header is above `--rollback-latency-factor` times the
//!   previous child's (no baseline, no rule).
//! - A crash of the new child, or its ejection by the active health checks,
//!   is a breach at once; the engine sees those itself.

use std::fmt;
use std::time::Duration;

use crate::serve::stats::Snapshot;

#[derive(Clone, Copy, Debug)]
pub struct Rules {
    /// As a fraction (0.05 for 5%).
    pub error_rate: f64,
    pub min_requests: u64,
    /// 0 turns the latency rule off.
    pub latency_factor: f64,
}

/// Why a new child was rolled back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    ErrorRate,
    Latency,
    Crashed,
    Unhealthy,
    /// `liveroll ctl rollback` (or `POST /rollback`).
    Operator,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::ErrorRate => "error-rate",
            Rule::Latency => "latency",
            Rule::Crashed => "crashed",
            Rule::Unhealthy => "unhealthy",
            Rule::Operator => "operator",
        }
    }
}

/// The figures a verdict rests on: the new child's since it was published,
/// and the previous child's baseline (its last minutes before that).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    pub new: Snapshot,
    pub previous: Option<Snapshot>,
}

impl Rules {
    /// The rule the new child breaks, if any.
    pub fn judge(&self, evidence: &Evidence) -> Option<Rule> {
        let new = &evidence.new;
        if new.requests() < self.min_requests {
            return None;
        }
        let baseline = evidence
            .previous
            .filter(|p| p.requests() >= self.min_requests);
        let rate = new.error_rate();
        let previous_rate = baseline.map_or(0.0, |p| p.error_rate());
        if rate > self.error_rate && rate > previous_rate {
            return Some(Rule::ErrorRate);
        }
        if self.latency_factor > 0.0 {
            if let (Some(new_p99), Some(old_p99)) = (new.p99(), baseline.and_then(|p| p.p99())) {
                if new_p99.as_secs_f64() > self.latency_factor * old_p99.as_secs_f64() {
                    return Some(Rule::Latency);
                }
            }
        }
        None
    }
}

impl fmt::Display for Evidence {
    /// `new="requests=40 errors=40 error_rate=100.0% p99=1ms" previous="..."`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "new={:?}", figures(&self.new))?;
        match &self.previous {
            Some(previous) => write!(f, " previous={:?}", figures(previous)),
            None => write!(f, " previous=none"),
        }
    }
}

fn figures(s: &Snapshot) -> String {
    let p99 = s
        .p99()
        .map_or("none".to_string(), |d| format!("{:?}", round(d)));
    format!(
        "requests={} errors={} error_rate={:.1}% p99={p99}",
        s.requests(),
        s.errors(),
        s.error_rate() * 100.0
    )
}

fn round(d: Duration) -> Duration {
    Duration::from_micros(d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::stats::Stats;

    const RULES: Rules = Rules {
        error_rate: 0.05,
        min_requests: 20,
        latency_factor: 3.0,
    };

    fn figures(ok: u64, errors: u64, latency: Duration) -> Snapshot {
        let stats = Stats::default();
        for _ in 0..ok {
            stats.response(200, latency);
        }
        for _ in 0..errors {
            stats.response(500, latency);
        }
        stats.snapshot()
    }

    const FAST: Duration = Duration::from_micros(300);

    #[test]
    fn too_few_requests_decide_nothing() {
        let evidence = Evidence {
            new: figures(0, 19, FAST),
            previous: None,
        };
        assert_eq!(RULES.judge(&evidence), None);
    }

    #[test]
    fn errors_above_the_rate_and_the_previous_child_breach() {
        let evidence = Evidence {
            new: figures(10, 10, FAST),
            previous: Some(figures(100, 0, FAST)),
        };
        assert_eq!(RULES.judge(&evidence), Some(Rule::ErrorRate));
        // Nothing to compare to: the rate alone decides.
        let alone = Evidence {
            previous: None,
            ..evidence
        };
        assert_eq!(RULES.judge(&alone), Some(Rule::ErrorRate));
        // No worse than the previous child: not the new version's fault.
        let as_bad = Evidence {
            previous: Some(figures(50, 50, FAST)),
            ..evidence
        };
        assert_eq!(RULES.judge(&as_bad), None);
        // Under the rate: fine.
        let fine = Evidence {
            new: figures(99, 1, FAST),
            ..evidence
        };
        assert_eq!(RULES.judge(&fine), None);
    }

    #[test]
    fn a_slower_p99_than_the_factor_allows_breaches() {
        let evidence = Evidence {
            new: figures(100, 0, Duration::from_millis(5)),
            previous: Some(figures(100, 0, Duration::from_millis(1))),
        };
        assert_eq!(RULES.judge(&evidence), Some(Rule::Latency));
        let twice = Evidence {
            new: figures(100, 0, Duration::from_millis(2)),
            ..evidence
        };
        assert_eq!(RULES.judge(&twice), None);
        // Without a baseline there is nothing to be slower than.
        let alone = Evidence {
            previous: None,
            ..evidence
        };
        assert_eq!(RULES.judge(&alone), None);
        let off = Rules {
            latency_factor: 0.0,
            ..RULES
        };
        assert_eq!(off.judge(&evidence), None);
    }

    #[test]
    fn evidence_reads_as_figures() {
        let evidence = Evidence {
            new: figures(0, 40, Duration::from_micros(700)),
            previous: None,
        };
        assert_eq!(
            evidence.to_string(),
            "new=\"requests=40 errors=40 error_rate=100.0% p99=1ms\" previous=none"
        );
    }
}
