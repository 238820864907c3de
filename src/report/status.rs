//! What liveroll is doing, for `/status`, `/ready`, `/metrics` and systemd.
//!
//! The supervisor reports here at each step; readers take a snapshot.
//! Per-request figures (in-flight counts, health) are read from the
//! backends at render time, so nothing on the request path touches this.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::serve::backends::Backend;
use crate::config::Config;
use crate::report::notify;

#[derive(Clone)]
pub struct ChildReport {
    pub slot: usize,
    pub port: u16,
    pub pid: i32,
    pub id: String,
    /// starting, serving or draining (unhealthy is read off the backend).
    pub state: &'static str,
    pub backend: Option<Arc<Backend>>,
}

struct Entry {
    report: ChildReport,
    since: SystemTime,
}

pub struct UpdateReport {
    pub trigger: String,
    pub result: &'static str,
    pub error: Option<String>,
    pub duration_ms: u128,
}

#[derive(Default)]
struct Inner {
    phase: String,
    children: Vec<Entry>,
    last_update: Option<(SystemTime, UpdateReport)>,
    stopping: bool,
}

pub struct Status {
    inner: Mutex<Inner>,
    config: Value,
}

impl Status {
    pub fn new(config: &Config) -> Self {
        Status {
            inner: Mutex::new(Inner::default()),
            config: effective_config(config),
        }
    }

    /// What is happening now (pulling, starting, draining, serving ...);
    /// also shown by `systemctl status`.
    pub fn phase(&self, text: String) {
        let mut inner = self.inner.lock().unwrap();
        if inner.phase != text && !inner.stopping {
            notify::status(&text);
            inner.phase = text;
        }
    }

    /// Like [`phase`](Self::phase), telling systemd in the same message that
    /// liveroll is ready (startup done, or a reload finished).
    pub fn ready_phase(&self, text: String) {
        let mut inner = self.inner.lock().unwrap();
        if !inner.stopping {
            notify::ready(&text);
            inner.phase = text;
        }
    }

    /// Replaces the list of children; `since` is kept for those whose state
    /// did not change.
    pub fn children(&self, reports: Vec<ChildReport>) {
        let mut inner = self.inner.lock().unwrap();
        let now = SystemTime::now();
        let children = reports
            .into_iter()
            .map(|report| {
                let since = inner
                    .children
                    .iter()
                    .find(|e| e.report.pid == report.pid && e.report.state == report.state)
                    .map_or(now, |e| e.since);
                Entry { report, since }
            })
            .collect();
        inner.children = children;
    }

    pub fn update_done(&self, report: UpdateReport) {
        self.inner.lock().unwrap().last_update = Some((SystemTime::now(), report));
    }

    /// Liveroll is shutting down: not ready any more (said once).
    pub fn stopping(&self) {
        let mut inner = self.inner.lock().unwrap();
        if !inner.stopping {
            inner.stopping = true;
            inner.phase = "stopping".into();
            notify::stopping();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.lock().unwrap().stopping
    }

    /// The ID of the newest child that serves and passes its checks.
    pub fn current_id(&self) -> Option<String> {
        let inner = self.inner.lock().unwrap();
        current(&inner).map(|e| e.report.id.clone())
    }

    /// Ready for traffic: a child serves and liveroll is not stopping.
    pub fn ready(&self) -> bool {
        let inner = self.inner.lock().unwrap();
        !inner.stopping && current(&inner).is_some()
    }

    pub fn to_json(&self) -> Value {
        let inner = self.inner.lock().unwrap();
        let children: Vec<Value> = inner
            .children
            .iter()
            .map(|e| {
                let r = &e.report;
                let unhealthy = r.backend.as_ref().is_some_and(|b| b.is_unhealthy());
                json!({
                    "slot": r.slot + 1,
                    "port": r.port,
                    "pid": r.pid,
                    "id": r.id,
                    "state": if unhealthy && r.state == "serving" { "unhealthy" } else { r.state },
                    "since": humantime::format_rfc3339_seconds(e.since).to_string(),
                    "inflight": r.backend.as_ref().map_or(0, |b| b.inflight()),
                })
            })
            .collect();
        let last_update = inner.last_update.as_ref().map(|(at, u)| {
            json!({
                "at": humantime::format_rfc3339_seconds(*at).to_string(),
                "trigger": u.trigger,
                "result": u.result,
                "error": u.error,
                "duration_ms": u.duration_ms,
            })
        });
        json!({
            "current_id": current(&inner).map(|e| e.report.id.clone()),
            "ready": !inner.stopping && current(&inner).is_some(),
            "phase": inner.phase,
            "children": children,
            "last_update": last_update,
            "config": self.config,
        })
    }
}

/// The newest child that serves: the same test as the supervisor's.
fn current(inner: &Inner) -> Option<&Entry> {
    inner
        .children
        .iter()
        .filter_map(|e| Some((e, e.report.backend.as_ref()?)))
        .filter(|(e, b)| e.report.state == "serving" && b.is_serving())
        .max_by_key(|(_, b)| b.generation)
        .map(|(e, _)| e)
}

fn effective_config(c: &Config) -> Value {
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    json!({
        "pull": c.pull,
        "id": c.id,
        "exec": c.exec,
        "interval": d(c.interval),
        "healthcheck": c.healthcheck,
        "health_timeout": d(c.health_timeout),
        "health_interval": d(c.health_interval),
        "unhealthy_threshold": c.unhealthy_threshold,
        "healthy_threshold": c.healthy_threshold,
        "drain_timeout": d(c.drain_timeout),
        "kill_timeout": d(c.kill_timeout),
        "command_timeout": d(c.command_timeout),
        "hold_timeout": d(c.hold_timeout),
        "max_held": c.max_held,
        "shutdown_delay": d(c.shutdown_delay),
        "admin_listen": c.admin_listen.map(|a| a.to_string()),
        "access_log": c.access_log,
        "listen": c.listen_addr().to_string(),
        "child_ports": c.child_ports(),
        "conf": c.conf,
    })
}
