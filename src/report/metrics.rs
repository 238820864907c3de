//! Counters for `/metrics`, in the Prometheus text format.
//!
//! Plain atomics: the proxy bumps one per request, nothing is locked or
//! allocated until a scrape renders them.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct Metrics {
    /// Responses by status class: 1xx..5xx.
    responses: [AtomicU64; 5],
    retries: AtomicU64,
    rollouts_rolled: AtomicU64,
    rollouts_unchanged: AtomicU64,
    rollouts_failed: AtomicU64,
    child_restarts: AtomicU64,
    /// Rollout durations: counts per bucket of [`BUCKETS`], then the sum in microseconds.
    rollout_buckets: [AtomicU64; BUCKETS.len()],
    rollout_count: AtomicU64,
    rollout_micros: AtomicU64,
}

/// Upper bounds (seconds) of the rollout duration histogram.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

pub static METRICS: Metrics = Metrics::new();

pub enum Rollout {
    Rolled(Duration),
    Unchanged,
    Failed,
}

impl Metrics {
    const fn new() -> Self {
        Metrics {
            responses: [const { AtomicU64::new(0) }; 5],
            retries: AtomicU64::new(0),
            rollouts_rolled: AtomicU64::new(0),
            rollouts_unchanged: AtomicU64::new(0),
            rollouts_failed: AtomicU64::new(0),
            child_restarts: AtomicU64::new(0),
            rollout_buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            rollout_count: AtomicU64::new(0),
            rollout_micros: AtomicU64::new(0),
        }
    }

    pub fn response(&self, status: u16) {
        if let Some(counter) = self.responses.get((status / 100).wrapping_sub(1) as usize) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn child_restart(&self) {
        self.child_restarts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rollout(&self, outcome: Rollout) {
        match outcome {
            Rollout::Unchanged => self.rollouts_unchanged.fetch_add(1, Ordering::Relaxed),
            Rollout::Failed => self.rollouts_failed.fetch_add(1, Ordering::Relaxed),
            Rollout::Rolled(took) => {
                let secs = took.as_secs_f64();
                for (bound, bucket) in BUCKETS.iter().zip(&self.rollout_buckets) {
                    if secs <= *bound {
                        bucket.fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.rollout_count.fetch_add(1, Ordering::Relaxed);
                self.rollout_micros
                    .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
                self.rollouts_rolled.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// The text exposition; `live` carries the gauges read at scrape time.
    pub fn render(&self, live: &Live) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let o = &mut out;
        header(
            o,
            "liveroll_responses_total",
            "counter",
            "Responses sent by the proxy, by status class.",
        );
        for (i, counter) in self.responses.iter().enumerate() {
            let _ = writeln!(
                o,
                "liveroll_responses_total{{class=\"{}xx\"}} {}",
                i + 1,
                get(counter)
            );
        }
        header(
            o,
            "liveroll_upstream_retries_total",
            "counter",
            "Upstream attempts that failed and were retried.",
        );
        let _ = writeln!(o, "liveroll_upstream_retries_total {}", get(&self.retries));
        header(
            o,
            "liveroll_held_requests",
            "gauge",
            "Requests waiting for a healthy child now.",
        );
        let _ = writeln!(o, "liveroll_held_requests {}", live.held);
        header(
            o,
            "liveroll_healthy_backends",
            "gauge",
            "Children the proxy may send requests to now.",
        );
        let _ = writeln!(o, "liveroll_healthy_backends {}", live.healthy_backends);
        header(
            o,
            "liveroll_child_restarts_total",
            "counter",
            "Serving children that exited on their own.",
        );
        let _ = writeln!(
            o,
            "liveroll_child_restarts_total {}",
            get(&self.child_restarts)
        );
        header(
            o,
            "liveroll_rollouts_total",
            "counter",
            "Updates by result.",
        );
        for (result, counter) in [
            ("rolled", &self.rollouts_rolled),
            ("unchanged", &self.rollouts_unchanged),
            ("failed", &self.rollouts_failed),
        ] {
            let _ = writeln!(
                o,
                "liveroll_rollouts_total{{result=\"{result}\"}} {}",
                get(counter)
            );
        }
        let name = "liveroll_rollout_duration_seconds";
        header(
            o,
            name,
            "histogram",
            "Time from trigger to the new child serving, for rollouts.",
        );
        for (bound, bucket) in BUCKETS.iter().zip(&self.rollout_buckets) {
            let _ = writeln!(o, "{name}_bucket{{le=\"{bound}\"}} {}", get(bucket));
        }
        let count = get(&self.rollout_count);
        let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(o, "{name}_sum {}", get(&self.rollout_micros) as f64 / 1e6);
        let _ = writeln!(o, "{name}_count {count}");
        header(
            o,
            "liveroll_current_id_info",
            "gauge",
            "The ID of the child serving now.",
        );
        if let Some(id) = &live.current_id {
            let _ = writeln!(
                o,
                "liveroll_current_id_info{{id=\"{}\"}} 1",
                escape_label(id)
            );
        }
        process_metrics(o);
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Values read at scrape time rather than counted.
pub struct Live {
    pub held: usize,
    pub healthy_backends: usize,
    pub current_id: Option<String>,
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The standard `process_*` metrics, from `/proc/self`.
fn process_metrics(out: &mut String) {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as f64;
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: utime, stime are fields 14 and 15 of stat (index 11, 12 here).
    let cpu = (field(11) + field(12)) / ticks;
    let start_ticks = field(19);
    let vsize = field(20);
    let rss = field(21) * page;
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("btime ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    for (name, kind, help, value) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            cpu,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vsize,
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            fds as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time since the Unix epoch, in seconds.",
            boot + start_ticks / ticks,
        ),
    ] {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
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
        let live = Live {
            held: 2,
            healthy_backends: 1,
            current_id: Some("sha\"1".into()),
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
