//! Prometheus metrics for `/metrics`, through the `prometheus` crate: it owns
//! the registry, the text format and the standard `process_*` metrics.
//!
//! The request path only bumps counters whose handles are resolved once at
//! startup (an atomic add each: no lock, no lookup); gauges that describe
//! the present are set when a scrape renders them.

use std::sync::LazyLock;

use super::child_metrics::{self, ChildFigures};
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::process_collector::ProcessCollector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Responses by status class: 1xx..5xx.
    responses: [IntCounter; 5],
    retries: IntCounter,
    child_restarts: IntCounter,
    /// Updates by result: rolled, unchanged, failed, quarantined.
    rollouts: [IntCounter; 4],
    /// Rollbacks by the rule that was broken.
    rollbacks: IntCounterVec,
    rollout_duration: Histogram,
    held: IntGauge,
    healthy_backends: IntGauge,
    current_id: IntGaugeVec,
}

/// Upper bounds (seconds) of the rollout duration histogram.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub enum Rollout {
    Rolled(Duration),
    Unchanged,
    Failed,
    Quarantined,
}

/// Values read at scrape time rather than counted.
pub struct Live {
    pub held: usize,
    pub healthy_backends: usize,
    pub current_id: Option<String>,
    pub children: Vec<ChildFigures>,
}

impl Metrics {
    fn new() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let family = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
        };
        let responses = family(
            "liveroll_responses_total",
            "Responses sent by the proxy, by status class.",
            "class",
        );
        let rollouts = family("liveroll_rollouts_total", "Updates by result.", "result");
        let metrics = Metrics {
            registry: Registry::new(),
            responses: ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| responses.with_label_values(&[class])),
            retries: counter(
                "liveroll_upstream_retries_total",
                "Upstream attempts that failed and were retried.",
            ),
            child_restarts: counter(
                "liveroll_child_restarts_total",
                "Serving children that exited on their own.",
            ),
            rollouts: ["rolled", "unchanged", "failed", "quarantined"]
                .map(|result| rollouts.with_label_values(&[result])),
            rollbacks: family(
                "liveroll_rollbacks_total",
                "Bake windows that ended in a rollback, by the rule broken.",
                "reason",
            ),
            rollout_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "liveroll_rollout_duration_seconds",
                    "Time from trigger to the new child serving, for rollouts.",
                )
                .buckets(BUCKETS.to_vec()),
            )
            .expect("valid metric"),
            held: gauge(
                "liveroll_held_requests",
                "Requests waiting for a healthy child now.",
            ),
            healthy_backends: gauge(
                "liveroll_healthy_backends",
                "Children the proxy may send requests to now.",
            ),
            current_id: IntGaugeVec::new(
                Opts::new(
                    "liveroll_current_id_info",
                    "The ID of the child serving now.",
                ),
                &["id"],
            )
            .expect("valid metric"),
        };
        let collectors: [Box<dyn Collector>; 10] = [
            Box::new(metrics.rollbacks.clone()),
            Box::new(responses),
            Box::new(rollouts),
            Box::new(metrics.retries.clone()),
            Box::new(metrics.child_restarts.clone()),
            Box::new(metrics.rollout_duration.clone()),
            Box::new(metrics.held.clone()),
            Box::new(metrics.healthy_backends.clone()),
            Box::new(metrics.current_id.clone()),
            Box::new(ProcessCollector::for_self()),
        ];
        for collector in collectors {
            metrics
                .registry
                .register(collector)
                .expect("metric names are unique");
        }
        metrics
    }

    pub fn response(&self, status: u16) {
        if let Some(counter) = self.responses.get((status / 100).wrapping_sub(1) as usize) {
            counter.inc();
        }
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    pub fn child_restart(&self) {
        self.child_restarts.inc();
    }

    pub fn rollout(&self, outcome: Rollout) {
        let counter = match outcome {
            Rollout::Rolled(took) => {
                self.rollout_duration.observe(took.as_secs_f64());
                &self.rollouts[0]
            }
            Rollout::Unchanged => &self.rollouts[1],
            Rollout::Failed => &self.rollouts[2],
            Rollout::Quarantined => &self.rollouts[3],
        };
        counter.inc();
    }

    /// A rollback because of `rule` (`error-rate`, `latency`, ...).
    pub fn rollback(&self, rule: &str) {
        self.rollbacks.with_label_values(&[rule]).inc();
    }

    /// The text exposition; `live` carries the gauges read at scrape time.
    pub fn render(&self, live: &Live) -> String {
        self.held.set(live.held as i64);
        self.healthy_backends.set(live.healthy_backends as i64);
        self.current_id.reset();
        if let Some(id) = &live.current_id {
            self.current_id.with_label_values(&[id]).set(1);
        }
        let mut out = Vec::with_capacity(4096);
        // Only fails on invalid families, which registration already refused.
        let mut families = self.registry.gather();
        families.extend(child_metrics::families(&live.children));
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_is_valid_exposition_text() {
        let m = Metrics::new();
        m.response(200);
        m.response(204);
        m.response(503);
        m.response(0);
        m.retry();
        m.rollout(Rollout::Rolled(Duration::from_millis(70)));
        m.rollout(Rollout::Failed);
        let child = crate::serve::stats::Stats::default();
        child.response(200, Duration::from_micros(300));
        child.response(502, Duration::from_millis(3));
        child.upstream_error();
        let live = Live {
            held: 2,
            healthy_backends: 1,
            current_id: Some("sha\"1".into()),
            children: vec![ChildFigures {
                id: "v2".into(),
                generation: 7,
                stats: child.snapshot(),
            }],
        };
        let text = m.render(&live);
        for line in [
            "liveroll_responses_total{class=\"2xx\"} 2",
            "liveroll_responses_total{class=\"5xx\"} 1",
            "liveroll_upstream_retries_total 1",
            "liveroll_held_requests 2",
            "liveroll_healthy_backends 1",
            "liveroll_rollouts_total{result=\"rolled\"} 1",
            "liveroll_rollouts_total{result=\"failed\"} 1",
            "liveroll_rollout_duration_seconds_bucket{le=\"0.05\"} 0",
            "liveroll_rollout_duration_seconds_bucket{le=\"0.1\"} 1",
            "liveroll_rollout_duration_seconds_bucket{le=\"+Inf\"} 1",
            "liveroll_rollout_duration_seconds_count 1",
            "liveroll_current_id_info{id=\"sha\\\"1\"} 1",
            "liveroll_child_requests_total{id=\"v2\",child=\"7\",class=\"2xx\"} 1",
            "liveroll_child_requests_total{id=\"v2\",child=\"7\",class=\"5xx\"} 1",
            "liveroll_child_upstream_errors_total{id=\"v2\",child=\"7\"} 1",
            "liveroll_child_response_seconds_bucket{id=\"v2\",child=\"7\",le=\"0.00025\"} 0",
            "liveroll_child_response_seconds_bucket{id=\"v2\",child=\"7\",le=\"0.0005\"} 1",
            "liveroll_child_response_seconds_bucket{id=\"v2\",child=\"7\",le=\"0.004\"} 2",
            "liveroll_child_response_seconds_bucket{id=\"v2\",child=\"7\",le=\"+Inf\"} 2",
            "liveroll_child_response_seconds_count{id=\"v2\",child=\"7\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample {line:?}");
        }
        assert!(text.contains("process_resident_memory_bytes "));
    }
}
