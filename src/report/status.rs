//! The `/status` document: what liveroll is doing, its children, the last
//! update and the effective configuration. Built on request from the
//! reporter's state and the engine's record of children; in-flight counts
//! and health are read off the backends at that moment, so nothing on the
//! request path touches this.

use std::collections::HashMap;
use std::time::SystemTime;

use serde_json::{json, Value};

use super::redact::redact;
use crate::config::{Config, StatusCommands};
use crate::update::slots::{self, ChildView, State};

/// The last update, as `/status` shows it.
pub struct UpdateRecord {
    /// Every update that started has one, counting from 1: a script waits
    /// for the one after the number it saw, whatever the ID.
    pub number: u64,
    pub at: SystemTime,
    pub trigger: String,
    /// rolled, unchanged or failed.
    pub result: &'static str,
    /// The step that failed, with its error.
    pub failure: Option<(&'static str, String)>,
    pub duration_ms: u128,
}

/// An open bake window.
pub struct BakeRecord {
    pub id: String,
    pub previous_id: String,
    pub until: SystemTime,
    pub canary: Option<f64>,
}

/// The last rollback.
pub struct RollbackRecord {
    pub at: SystemTime,
    pub id: String,
    pub previous_id: String,
    pub rule: &'static str,
    pub evidence: String,
}

/// Everything `/status` shows, borrowed for one rendering.
pub struct Snapshot<'a> {
    pub phase: &'a str,
    pub stopping: bool,
    pub children: &'a [ChildView],
    pub last_update: Option<&'a UpdateRecord>,
    pub bake: Option<&'a BakeRecord>,
    pub last_rollback: Option<&'a RollbackRecord>,
    pub paused: bool,
    /// Updates that rolled to a new child.
    pub rollouts: u64,
    /// When each child (by generation) was started.
    pub started_at: &'a HashMap<u64, SystemTime>,
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
                "started_at": s.started_at.get(&c.info.generation).map(|t| time(*t)),
                "inflight": c.backend.as_ref().map_or(0, |b| b.inflight()),
            })
        })
        .collect();
    let last_update = s.last_update.map(|u| {
        json!({
            "number": u.number,
            "at": time(u.at),
            "trigger": u.trigger,
            "result": u.result,
            "step": u.failure.as_ref().map(|(step, _)| step),
            "error": u.failure.as_ref().map(|(_, error)| error),
            "duration_ms": u.duration_ms,
        })
    });
    let bake = s.bake.map(|b| {
        let left = b
            .until
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        json!({
            "id": b.id,
            "previous_id": b.previous_id,
            "ends_in_ms": left.as_millis(),
            "canary_percent": b.canary,
        })
    });
    let last_rollback = s.last_rollback.map(|r| {
        json!({
            "at": time(r.at),
            "id": r.id,
            "previous_id": r.previous_id,
            "reason": r.rule,
            "evidence": r.evidence,
        })
    });
    json!({
        "pid": std::process::id(),
        "current_id": current.map(|c| c.info.id.clone()),
        "ready": !s.stopping && current.is_some(),
        "phase": s.phase,
        "paused": s.paused,
        "children": children,
        "bake": bake,
        "last_update": last_update,
        "last_rollback": last_rollback,
        "rollouts": s.rollouts,
        "config": s.config,
    })
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The configuration in effect, as `/status` shows it: the commands as
/// `--status-commands` says, the admin token never.
pub fn effective_config(c: &Config) -> Value {
    let d = |d: std::time::Duration| humantime::format_duration(d).to_string();
    let command = |cmd: &str| match c.status_commands {
        StatusCommands::Full => Value::from(cmd),
        StatusCommands::Redacted => Value::from(redact(cmd)),
        StatusCommands::Hidden => Value::from("(hidden: --status-commands hidden)"),
    };
    json!({
        "pull": command(&c.pull),
        "id": command(&c.id),
        "exec": command(&c.exec),
        "stop": c.stop.as_deref().map(command),
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
        "bake": d(c.bake),
        "rollback_error_rate": c.rollback_error_rate,
        "rollback_min_requests": c.rollback_min_requests,
        "rollback_latency_factor": c.rollback_latency_factor,
        "canary": c.canary,
        "canary_by": format!("{:?}", c.canary_by).to_lowercase(),
        "admin_listen": c.admin_listen.map(|a| a.to_string()),
        "ready_listen": c.ready_listen.map(|a| a.to_string()),
        "admin_token": c.admin_token.is_some(),
        "status_commands": format!("{:?}", c.status_commands).to_lowercase(),
        "access_log": c.access_log,
        "listen": c.listen_addr().to_string(),
        "child_ports": c.child_ports(),
        "conf": c.conf,
        "header_timeout": d(c.header_timeout),
        "keepalive_timeout": d(c.keepalive_timeout),
        "max_connections": c.max_connections,
        "max_body_size": c.max_body_size,
        "trusted_proxies": c.trusted_proxies.iter().map(|b| b.to_string()).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(extra: &[&str]) -> Config {
        let mut args = vec![
            "liveroll",
            "--pull",
            "docker login -u ci -p hunter2 ghcr.io && docker pull ghcr.io/x/app",
            "--id",
            "curl -fsS -H 'Authorization: Bearer tok123' https://api.example.com/v",
            "--exec",
            "DB_PASSWORD=pw456 exec app --port <<PORT>>",
            "--stop",
            "curl -u admin:pw789 https://ctl.example.com/stop/<<PORT>>",
            "--admin-token",
            "admintok",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).unwrap()
    }

    #[test]
    fn the_configuration_shows_no_secret() {
        let shown = effective_config(&config(&[])).to_string();
        for secret in ["hunter2", "tok123", "pw456", "pw789", "admintok"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        let shown = effective_config(&config(&[]));
        assert_eq!(shown["exec"], "DB_PASSWORD=*** exec app --port <<PORT>>");
        assert_eq!(shown["admin_token"], true);
        assert_eq!(shown["status_commands"], "redacted");

        let full = effective_config(&config(&["--status-commands", "full"]));
        assert_eq!(
            full["stop"],
            "curl -u admin:pw789 https://ctl.example.com/stop/<<PORT>>"
        );
        assert!(!full.to_string().contains("admintok"));

        let hidden = effective_config(&config(&["--status-commands", "hidden"])).to_string();
        for secret in ["hunter2", "tok123", "pw456", "pw789", "ghcr.io", "admintok"] {
            assert!(!hidden.contains(secret), "{secret} in {hidden}");
        }
    }
}
