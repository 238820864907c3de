//! The `/status` document: what liveroll is doing, its children, the last
//! update and the effective configuration. Built on request from the
//! reporter's state and the engine's record of children; in-flight counts
//! and health are read off the backends at that moment, so nothing on the
//! request path touches this.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::config::Config;
use crate::update::slots::{self, ChildView, State};

/// The last update, as `/status` shows it.
pub struct UpdateRecord {
    pub at: SystemTime,
    pub trigger: String,
    /// rolled, unchanged or failed.
    pub result: &'static str,
    /// The step that failed, with its error.
    pub failure: Option<(&'static str, String)>,
    pub duration_ms: u128,
}

/// Everything `/status` shows, borrowed for one rendering.
pub struct Snapshot<'a> {
    pub phase: &'a str,
    pub stopping: bool,
    pub children: &'a [ChildView],
    pub last_update: Option<&'a UpdateRecord>,
    pub config: &'a Value,
}

pub fn render(s: &Snapshot) -> Value {
    let current = slots::current(s.children);
    let children: Vec<Value> = s
        .children
        .iter()
        .map(|c| {
            let unhealthy = c.backend.as_ref().is_some_and(|b| b.is_unhealthy());
            let state = match c.state {
                State::Serving if unhealthy => "unhealthy",
                state => state.as_str(),
            };
            json!({
                "slot": c.info.slot + 1,
                "port": c.info.port,
                "pid": c.info.pid,
                "id": c.info.id,
                "state": state,
                "since": time(c.since),
                "inflight": c.backend.as_ref().map_or(0, |b| b.inflight()),
            })
        })
        .collect();
    let last_update = s.last_update.map(|u| {
        json!({
            "at": time(u.at),
            "trigger": u.trigger,
            "result": u.result,
            "step": u.failure.as_ref().map(|(step, _)| step),
            "error": u.failure.as_ref().map(|(_, error)| error),
            "duration_ms": u.duration_ms,
        })
    });
    json!({
        "current_id": current.map(|c| c.info.id.clone()),
        "ready": !s.stopping && current.is_some(),
        "phase": s.phase,
        "children": children,
        "last_update": last_update,
        "config": s.config,
    })
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The configuration in effect, as `/status` shows it.
pub fn effective_config(c: &Config) -> Value {
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
