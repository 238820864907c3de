//! Everything the engine tells the reporter, as plain values, and the log
//! line each one is shown as. Operators grep these lines (and so do the
//! tests), so each is pinned by a unit test below. Values that come from
//! outside (IDs, commands, error texts) are quoted when they could be read
//! as more than one field ([`super::logfmt`]).

use std::fmt::Write;
use std::process::ExitStatus;
use std::time::Duration;

use log::Level;

use super::logfmt::q;

use crate::process::command::CommandError;
use crate::update::bake::{Evidence, Rule};
use crate::update::control::{Answer, Command};
use crate::update::error::UpdateError;
use crate::update::slots::ChildInfo;
use crate::update::trigger::{Reason, Trigger};

/// How an update ended.
#[derive(Debug)]
pub enum Outcome {
    /// The ID already serves; nothing was started.
    Unchanged,
    /// A new child serves; how long that took from the trigger.
    Rolled(Duration),
    /// `--id` printed this ID, which was rolled back from: it stays
    /// quarantined until `--id` prints another one; only a forced update
    /// starts it.
    Quarantined(String),
    Failed(UpdateError),
}

/// Why no update ran for a trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipWhy {
    /// A stop signal came.
    Stopping,
    /// Automatic updates are paused (`liveroll ctl pause`).
    Paused,
}

/// Why a bake window ended with the new child kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promotion {
    /// The window passed without a breach.
    Passed,
    /// `liveroll ctl promote` (or `POST /promote`).
    Operator,
    /// Another update started: the baking child is the one to compare with.
    Superseded,
    /// The previous child exited: there is nothing to roll back to.
    PreviousExited,
}

impl Promotion {
    pub fn as_str(self) -> &'static str {
        match self {
            Promotion::Passed => "passed",
            Promotion::Operator => "operator",
            Promotion::Superseded => "superseded",
            Promotion::PreviousExited => "previous-exited",
        }
    }
}

/// Why `--stop` ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Before a retired child's tree is signalled.
    Retire,
    /// A child that exited on its own, or never became healthy.
    Failed,
    /// The slot's port was still held when a new child needed it.
    PortHeld,
    /// At startup, for both slots.
    Startup,
    Shutdown,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Retire => "retire",
            StopReason::Failed => "failed",
            StopReason::PortHeld => "port-held",
            StopReason::Startup => "startup",
            StopReason::Shutdown => "shutdown",
        }
    }
}

/// What a signal made liveroll do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    ForcedUpdate,
    /// Stopping: no update starts any more.
    Ignored,
    Shutdown,
    /// A second stop signal: the shutdown delay is cut short.
    ShutdownNow,
    /// SIGUSR2: hand over to a new liveroll process.
    Upgrade,
}

#[derive(Debug)]
pub enum Event {
    /// A trigger arrived while stopping or paused: nothing starts.
    Skipped {
        trigger: Reason,
        why: SkipWhy,
    },
    UpdateStarted {
        trigger: Trigger,
    },
    Pulling {
        trigger: Reason,
    },
    /// `--id` printed `id`; `unchanged`: it already serves and nothing is forced.
    IdRead {
        id: String,
        serving: Option<String>,
        forced: bool,
        unchanged: bool,
    },
    Spawned {
        child: ChildInfo,
        cmd: String,
    },
    Healthy {
        child: ChildInfo,
    },
    Published {
        child: ChildInfo,
    },
    Draining {
        child: ChildInfo,
        inflight: usize,
    },
    DrainTimeout {
        child: ChildInfo,
        inflight: usize,
        after: Duration,
    },
    /// Still running `after` SIGTERM: the group gets SIGKILL.
    Killed {
        child: ChildInfo,
        after: Duration,
    },
    Terminated {
        child: ChildInfo,
        status: Option<ExitStatus>,
    },
    /// A child exited on its own; `ran` is known when it was serving.
    /// `serving`: what serves now.
    Exited {
        child: ChildInfo,
        status: Option<ExitStatus>,
        ran: Option<Duration>,
        serving: Option<ChildInfo>,
    },
    ReplaceScheduled {
        delay: Duration,
    },
    /// `--stop` ran for the child on `port`.
    StopRan {
        port: u16,
        reason: StopReason,
        result: Result<(), CommandError>,
    },
    /// At startup: a child an earlier liveroll started and did not stop (it
    /// crashed or was killed); it is stopped now.
    Leftover {
        child: ChildInfo,
        running: bool,
    },
    /// A new child serves; the previous one is kept warm for `window` and
    /// comes back if the new one breaks a rule.
    BakeStarted {
        new: ChildInfo,
        previous: ChildInfo,
        window: Duration,
        /// The share of clients on the new child, if a canary runs.
        canary: Option<f64>,
    },
    /// The bake window ended with the new child kept.
    Promoted {
        new: ChildInfo,
        previous: ChildInfo,
        why: Promotion,
    },
    /// The new child broke `rule`: the previous one serves again, at once,
    /// and the new one is drained and stopped.
    RolledBack {
        rule: Rule,
        new: ChildInfo,
        previous: ChildInfo,
        evidence: Box<Evidence>,
    },
    /// An operator command, and what came of it.
    Control {
        command: Command,
        answer: Answer,
    },
    UpdateDone {
        trigger: Trigger,
        outcome: Outcome,
        /// What serves after the update.
        serving: Option<ChildInfo>,
        took: Duration,
    },
    Unhealthy {
        port: u16,
        failed_checks: u32,
    },
    Recovered {
        port: u16,
        passed_checks: u32,
    },
    /// A child out of rotation for being overloaded now fails its checks
    /// outright: it is replaced.
    FailingWhileShed {
        port: u16,
        failed_checks: u32,
    },
    /// Probes time out while the child keeps completing requests: it is
    /// never replaced for it. `shed`: out of rotation, as another child
    /// serves; else it stays (said once per episode).
    Overloaded {
        port: u16,
        busy_checks: u32,
        inflight: usize,
        shed: bool,
    },
    /// liveroll could not open a probe's socket (out of descriptors): the
    /// check counts for nothing.
    ProbeSkipped {
        port: u16,
    },
    /// At startup: the descriptor limit in effect (raised from the one
    /// inherited) and `--max-connections`.
    Limits {
        nofile: u64,
        inherited_nofile: u64,
        max_connections: usize,
    },
    /// At startup: `--max-connections` leaves no room for upstream
    /// connections and the reserve within the descriptor limit.
    MaxConnectionsUnsafe {
        max_connections: usize,
        safe: usize,
        nofile: u64,
    },
    /// At startup: a child port is inside the kernel's ephemeral port range
    /// `range`, where any outgoing connection may take it.
    EphemeralPort {
        key: &'static str,
        port: u16,
        range: (u16, u16),
    },
    Signal {
        name: &'static str,
        action: SignalAction,
    },
    ShutdownDelay {
        delay: Duration,
    },
    Stopping,
    Stopped {
        took: Duration,
    },
    /// Upgrade, old side: the new process (`new_pid`) was started from `binary`.
    UpgradeStarted {
        new_pid: i32,
        binary: String,
    },
    /// Upgrade, old side: the new process did not take over; this one keeps
    /// serving as before.
    UpgradeFailed {
        error: String,
    },
    /// Upgrade, old side: the new process serves and owns the children;
    /// this one stopped accepting and drains its connections.
    HandedOver {
        new_pid: i32,
        took: Duration,
    },
    /// Upgrade, old side: its connections are done (or `--drain-timeout`
    /// passed with `open` still open); it exits, the children keep running.
    HandoverDrained {
        open: usize,
        took: Duration,
    },
    /// A running child of an earlier liveroll process is taken over as it
    /// is: on an upgrade, or at startup after a restart.
    Adopted {
        child: ChildInfo,
        upgrade: bool,
    },
    /// Upgrade, new side: the old process (`from_pid`) handed over; this
    /// one serves.
    Upgraded {
        from_pid: i32,
    },
    /// The state file could not be written: a crash now would leave
    /// children the next start cannot find.
    StateFailed {
        error: String,
    },
    AdminFailed {
        error: String,
    },
    Fatal {
        error: String,
    },
}

impl Event {
    /// Writes this event's log line, and nothing else (for what happens
    /// before the reporter exists, at startup).
    pub fn log(&self) {
        let (level, line) = self.log_line();
        log::log!(level, "{line}");
    }

    /// The log line for this event, with its level.
    pub fn log_line(&self) -> (Level, String) {
        use Event::*;
        use Level::{Debug, Error, Info, Warn};
        match self {
            Skipped { trigger, why } => {
                let why = match why {
                    SkipWhy::Stopping => "stopping",
                    SkipWhy::Paused => "paused",
                };
                (
                    Debug,
                    format!("event=skipped trigger={trigger} reason={why}"),
                )
            }
            UpdateStarted { trigger } => (
                Debug,
                format!("event=update trigger={} forced={}", trigger.reason, trigger.forced),
            ),
            Pulling { trigger } => (Debug, format!("event=pull trigger={trigger}")),
            IdRead { id, unchanged: true, .. } => (Debug, format!("event=id id={}", q(id))),
            IdRead {
                id,
                serving,
                forced,
                ..
            } => (
                Info,
                format!(
                    "event=id id={} serving_id={} forced={forced}",
                    q(id),
                    q(id_or_none(serving))
                ),
            ),
            Spawned { child, cmd } => (Info, format!("event=spawn {} cmd={cmd:?}", fields(child))),
            Healthy { child } => (Info, format!("event=healthy {}", fields(child))),
            Published { child } => (Info, format!("event=publish {}", fields(child))),
            Draining { child, inflight } => (
                Info,
                format!("event=drain {} inflight={inflight}", fields(child)),
            ),
            DrainTimeout {
                child,
                inflight,
                after,
            } => (
                Warn,
                format!(
                    "event=drain_timeout port={} pid={} inflight={inflight} after={after:?}",
                    child.port, child.pid
                ),
            ),
            Killed { child, after } => (
                Warn,
                format!(
                    "event=kill pgid={} reason=\"still running {after:?} after SIGTERM\"",
                    child.pid
                ),
            ),
            Terminated { child, status } => (
                Info,
                format!(
                    "event=terminated {} status={:?}",
                    fields(child),
                    status_text(*status)
                ),
            ),
            Exited {
                child, status, ran, ..
            } => {
                let ran = ran.map_or(String::new(), |r| format!(" ran_ms={}", r.as_millis()));
                let status = status_text(*status);
                let line = format!("event=exit unexpected=true {} status={status:?}{ran}", fields(child));
                (Warn, line)
            }
            ReplaceScheduled { delay } => (
                Info,
                format!("event=replace_scheduled delay_ms={}", delay.as_millis()),
            ),
            StopRan {
                port,
                reason,
                result: Ok(()),
            } => (
                Info,
                format!("event=stop_command port={port} reason={}", reason.as_str()),
            ),
            StopRan {
                port,
                reason,
                result: Err(e),
            } => (
                Warn,
                format!(
                    "event=stop_failed port={port} reason={} error={:?}",
                    reason.as_str(),
                    format!("--stop failed: {e}")
                ),
            ),
            Leftover { child, running } => (
                Warn,
                format!(
                    "event=leftover {} running={running} action=stop",
                    fields(child)
                ),
            ),
            BakeStarted {
                new,
                previous,
                window,
                canary,
            } => {
                let canary = canary.map_or("off".into(), |p| format!("{p}%"));
                (
                    Info,
                    format!(
                        "event=bake id={} previous_id={} window={} canary={canary}",
                        q(&new.id),
                        q(&previous.id),
                        humantime::format_duration(*window)
                    ),
                )
            }
            Promoted { new, previous, why } => (
                Info,
                format!(
                    "event=promoted id={} previous_id={} reason={}",
                    q(&new.id),
                    q(&previous.id),
                    why.as_str()
                ),
            ),
            RolledBack {
                rule,
                new,
                previous,
                evidence,
            } => (
                Warn,
                format!(
                    "event=rolled-back rule={} id={} previous_id={} {evidence}",
                    rule.as_str(),
                    q(&new.id),
                    q(&previous.id)
                ),
            ),
            Control { command, answer } => {
                let (result, text) = match answer {
                    Ok(text) => ("ok", text),
                    Err(text) => ("refused", text),
                };
                (
                    Info,
                    format!(
                        "event=control command={} result={result} message={text:?}",
                        command.as_str()
                    ),
                )
            }
            UpdateDone {
                trigger,
                outcome,
                serving,
                ..
            } => update_done(trigger.reason, outcome, serving.as_ref()),
            Unhealthy {
                port,
                failed_checks,
            } => (
                Warn,
                format!("event=unhealthy port={port} failed_checks={failed_checks} action=eject-and-replace"),
            ),
            Recovered {
                port,
                passed_checks,
            } => (
                Info,
                format!("event=recovered port={port} passed_checks={passed_checks}"),
            ),
            FailingWhileShed {
                port,
                failed_checks,
            } => (
                Warn,
                format!("event=unhealthy port={port} failed_checks={failed_checks} action=replace"),
            ),
            Overloaded {
                port,
                busy_checks,
                inflight,
                shed,
            } => {
                let (action, why) = match shed {
                    true => ("out-of-rotation", "another child serves"),
                    false => ("keep", "no other child serves"),
                };
                (
                    Warn,
                    format!(
                        "event=overloaded port={port} busy_checks={busy_checks} inflight={inflight} \
                         action={action} reason=\"probes time out while it completes requests; {why}\""
                    ),
                )
            }
            ProbeSkipped { port } => (
                Debug,
                format!("event=probe_skipped port={port} reason=\"liveroll is out of file descriptors\""),
            ),
            Limits {
                nofile,
                inherited_nofile,
                max_connections,
            } => (
                Info,
                format!("event=limits nofile={nofile} inherited_nofile={inherited_nofile} max_connections={max_connections}"),
            ),
            MaxConnectionsUnsafe {
                max_connections,
                safe,
                nofile,
            } => (
                Warn,
                format!(
                    "event=config_warning key=max-connections value={max_connections} safe={safe} \
                     reason=\"each connection may need two of the {nofile} descriptors: accept may fail with EMFILE\""
                ),
            ),
            EphemeralPort {
                key,
                port,
                range: (lo, hi),
            } => (
                Warn,
                format!(
                    "event=config_warning key={key} value={port} reason=\"inside the kernel's ephemeral \
                     port range {lo}-{hi}: outgoing connections may take it; pick a port below {lo} \
                     or add it to net.ipv4.ip_local_reserved_ports\""
                ),
            ),
            Signal { name, action } => {
                let action = match action {
                    SignalAction::ForcedUpdate => "forced-update",
                    SignalAction::Ignored => "ignored reason=stopping",
                    SignalAction::Shutdown => "shutdown",
                    SignalAction::ShutdownNow => "shutdown-now",
                    SignalAction::Upgrade => "upgrade",
                };
                (Info, format!("event=signal signal={name} action={action}"))
            }
            ShutdownDelay { delay } => (
                Info,
                format!("event=shutdown_delay delay={}", humantime::format_duration(*delay)),
            ),
            Stopping => (Debug, "event=stopping".into()),
            Stopped { took } => (Info, format!("event=stopped took_ms={}", took.as_millis())),
            UpgradeStarted { new_pid, binary } => (
                Info,
                format!("event=upgrade_start new_pid={new_pid} binary={binary:?}"),
            ),
            UpgradeFailed { error } => (
                Error,
                format!("event=upgrade_failed error={error:?} action=keep-serving"),
            ),
            HandedOver { new_pid, took } => (
                Info,
                format!(
                    "event=handed_over new_pid={new_pid} took_ms={} action=drain-and-exit",
                    took.as_millis()
                ),
            ),
            HandoverDrained { open, took } => (
                Info,
                format!(
                    "event=handover_drained open_connections={open} took_ms={} children=left-running",
                    took.as_millis()
                ),
            ),
            Adopted { child, upgrade } => (
                Info,
                format!(
                    "event=adopt {} from={}",
                    fields(child),
                    if *upgrade { "upgrade" } else { "restart" }
                ),
            ),
            Upgraded { from_pid } => (Info, format!("event=upgraded from_pid={from_pid}")),
            StateFailed { error } => (Error, format!("event=state_failed error={error:?}")),
            AdminFailed { error } => (Error, format!("event=admin_failed error={error:?}")),
            Fatal { error } => (Error, format!("event=fatal error={error:?}")),
        }
    }
}

/// The line that ends an update: unchanged, rolled or failed.
fn update_done(trigger: Reason, outcome: &Outcome, serving: Option<&ChildInfo>) -> (Level, String) {
    let serving_id = q(serving.map_or("none", |c| c.id.as_str()));
    match (outcome, serving) {
        (Outcome::Unchanged, _) => (
            Level::Debug,
            format!("event=unchanged trigger={trigger} id={serving_id}"),
        ),
        (Outcome::Quarantined(id), _) => (
            Level::Info,
            format!(
                "event=quarantined trigger={trigger} id={} serving_id={serving_id}",
                q(id)
            ),
        ),
        (Outcome::Rolled(took), Some(c)) => (
            Level::Info,
            format!(
                "event=rolled trigger={trigger} id={} slot={} port={} pid={} took_ms={}",
                q(&c.id),
                c.slot + 1,
                c.port,
                c.pid,
                took.as_millis()
            ),
        ),
        // It died again while the old one drained; its exit is handled next.
        (Outcome::Rolled(took), None) => (
            Level::Warn,
            format!(
                "event=rolled trigger={trigger} took_ms={} serving_id=none",
                took.as_millis()
            ),
        ),
        (Outcome::Failed(error), _) => {
            let mut line = format!(
                "event=update_failed trigger={trigger} step={}",
                error.step().as_str()
            );
            if let UpdateError::Unhealthy { port, pid, .. }
            | UpdateError::NotOurs { port, pid, .. } = error
            {
                let _ = write!(line, " port={port} pid={pid}");
            }
            let _ = write!(
                line,
                " error={:?} serving_id={serving_id}",
                error.to_string()
            );
            (Level::Error, line)
        }
    }
}

fn id_or_none(id: &Option<String>) -> &str {
    id.as_deref().unwrap_or("none")
}

/// `slot= port= pid= id=`, the fields that name a child.
fn fields(child: &ChildInfo) -> String {
    format!(
        "slot={} port={} pid={} id={}",
        child.slot + 1,
        child.port,
        child.pid,
        q(&child.id)
    )
}

fn status_text(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "unknown".into(), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::process::probe::HealthError;

    fn child() -> ChildInfo {
        ChildInfo {
            slot: 1,
            port: 9102,
            pid: 4242,
            id: "v2".into(),
            generation: 7,
        }
    }

    fn trigger(reason: Reason) -> Trigger {
        Trigger {
            reason,
            forced: reason.forced(),
            reload: reason == Reason::Sighup,
        }
    }

    fn line(event: Event) -> String {
        let (level, line) = event.log_line();
        format!("{level} {line}")
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn skipped() {
        let e = Event::Skipped {
            trigger: Reason::Interval,
            why: SkipWhy::Stopping,
        };
        assert_eq!(
            line(e),
            "DEBUG event=skipped trigger=interval reason=stopping"
        );
        let e = Event::Skipped {
            trigger: Reason::Interval,
            why: SkipWhy::Paused,
        };
        assert_eq!(
            line(e),
            "DEBUG event=skipped trigger=interval reason=paused"
        );
    }

    #[test]
    fn update_started() {
        let e = Event::UpdateStarted {
            trigger: trigger(Reason::Sighup),
        };
        assert_eq!(line(e), "DEBUG event=update trigger=sighup forced=true");
    }

    #[test]
    fn pulling() {
        let e = Event::Pulling {
            trigger: Reason::Startup,
        };
        assert_eq!(line(e), "DEBUG event=pull trigger=startup");
    }

    #[test]
    fn id_read() {
        let e = Event::IdRead {
            id: "v2".into(),
            serving: Some("v1".into()),
            forced: false,
            unchanged: false,
        };
        assert_eq!(line(e), "INFO event=id id=v2 serving_id=v1 forced=false");
        let e = Event::IdRead {
            id: "v1".into(),
            serving: None,
            forced: true,
            unchanged: false,
        };
        assert_eq!(line(e), "INFO event=id id=v1 serving_id=none forced=true");
        let e = Event::IdRead {
            id: "v1".into(),
            serving: Some("v1".into()),
            forced: false,
            unchanged: true,
        };
        assert_eq!(line(e), "DEBUG event=id id=v1");
    }

    #[test]
    fn spawned() {
        let e = Event::Spawned {
            child: child(),
            cmd: "app --port 9102".into(),
        };
        assert_eq!(
            line(e),
            "INFO event=spawn slot=2 port=9102 pid=4242 id=v2 cmd=\"app --port 9102\""
        );
    }

    #[test]
    fn healthy() {
        let e = Event::Healthy { child: child() };
        assert_eq!(
            line(e),
            "INFO event=healthy slot=2 port=9102 pid=4242 id=v2"
        );
    }

    #[test]
    fn published() {
        let e = Event::Published { child: child() };
        assert_eq!(
            line(e),
            "INFO event=publish slot=2 port=9102 pid=4242 id=v2"
        );
    }

    #[test]
    fn draining() {
        let e = Event::Draining {
            child: child(),
            inflight: 3,
        };
        assert_eq!(
            line(e),
            "INFO event=drain slot=2 port=9102 pid=4242 id=v2 inflight=3"
        );
    }

    #[test]
    fn drain_timeout() {
        let e = Event::DrainTimeout {
            child: child(),
            inflight: 1,
            after: SECOND,
        };
        assert_eq!(
            line(e),
            "WARN event=drain_timeout port=9102 pid=4242 inflight=1 after=1s"
        );
    }

    #[test]
    fn killed() {
        let e = Event::Killed {
            child: child(),
            after: Duration::from_secs(10),
        };
        assert_eq!(
            line(e),
            "WARN event=kill pgid=4242 reason=\"still running 10s after SIGTERM\""
        );
    }

    #[test]
    fn terminated() {
        let e = Event::Terminated {
            child: child(),
            status: Some(ExitStatus::from_raw(15)),
        };
        assert_eq!(
            line(e),
            "INFO event=terminated slot=2 port=9102 pid=4242 id=v2 status=\"signal: 15 (SIGTERM)\""
        );
        let e = Event::Terminated {
            child: child(),
            status: None,
        };
        assert!(line(e).ends_with("status=\"unknown\""));
    }

    #[test]
    fn exited() {
        let e = Event::Exited {
            child: child(),
            status: Some(ExitStatus::from_raw(9)),
            ran: Some(Duration::from_millis(1500)),
            serving: None,
        };
        assert_eq!(
            line(e),
            "WARN event=exit unexpected=true slot=2 port=9102 pid=4242 id=v2 status=\"signal: 9 (SIGKILL)\" ran_ms=1500"
        );
        let e = Event::Exited {
            child: child(),
            status: Some(ExitStatus::from_raw(0)),
            ran: None,
            serving: None,
        };
        assert!(line(e).ends_with("status=\"exit status: 0\""));
    }

    #[test]
    fn replace_scheduled() {
        let e = Event::ReplaceScheduled { delay: SECOND };
        assert_eq!(line(e), "INFO event=replace_scheduled delay_ms=1000");
    }

    #[test]
    fn stop_ran() {
        let e = Event::StopRan {
            port: 9101,
            reason: StopReason::Retire,
            result: Ok(()),
        };
        assert_eq!(line(e), "INFO event=stop_command port=9101 reason=retire");
        let e = Event::StopRan {
            port: 9102,
            reason: StopReason::PortHeld,
            result: Err(CommandError::TimedOut(SECOND)),
        };
        assert_eq!(
            line(e),
            "WARN event=stop_failed port=9102 reason=port-held error=\"--stop failed: timed out after 1s, process group killed\""
        );
    }

    #[test]
    fn leftover() {
        let e = Event::Leftover {
            child: child(),
            running: true,
        };
        assert_eq!(
            line(e),
            "WARN event=leftover slot=2 port=9102 pid=4242 id=v2 running=true action=stop"
        );
    }

    fn previous() -> ChildInfo {
        ChildInfo {
            slot: 0,
            port: 9101,
            pid: 4141,
            id: "v1".into(),
            generation: 6,
        }
    }

    #[test]
    fn bake_started() {
        let e = Event::BakeStarted {
            new: child(),
            previous: previous(),
            window: Duration::from_secs(30),
            canary: Some(10.0),
        };
        assert_eq!(
            line(e),
            "INFO event=bake id=v2 previous_id=v1 window=30s canary=10%"
        );
        let e = Event::BakeStarted {
            new: child(),
            previous: previous(),
            window: Duration::from_secs(90),
            canary: None,
        };
        assert_eq!(
            line(e),
            "INFO event=bake id=v2 previous_id=v1 window=1m 30s canary=off"
        );
    }

    #[test]
    fn promoted() {
        let e = Event::Promoted {
            new: child(),
            previous: previous(),
            why: Promotion::Passed,
        };
        assert_eq!(
            line(e),
            "INFO event=promoted id=v2 previous_id=v1 reason=passed"
        );
    }

    #[test]
    fn rolled_back() {
        let e = Event::RolledBack {
            rule: Rule::ErrorRate,
            new: child(),
            previous: previous(),
            evidence: Box::default(),
        };
        assert_eq!(
            line(e),
            "WARN event=rolled-back rule=error-rate id=v2 previous_id=v1 \
             new=\"requests=0 errors=0 error_rate=0.0% p99=none\" previous=none"
        );
    }

    #[test]
    fn control() {
        let e = Event::Control {
            command: Command::Pause,
            answer: Ok("automatic updates paused".into()),
        };
        assert_eq!(
            line(e),
            "INFO event=control command=pause result=ok message=\"automatic updates paused\""
        );
        let e = Event::Control {
            command: Command::Promote,
            answer: Err("no bake window is open".into()),
        };
        assert_eq!(
            line(e),
            "INFO event=control command=promote result=refused message=\"no bake window is open\""
        );
    }

    #[test]
    fn update_done_quarantined() {
        let e = Event::UpdateDone {
            trigger: trigger(Reason::Interval),
            outcome: Outcome::Quarantined("v2".into()),
            serving: Some(previous()),
            took: SECOND,
        };
        assert_eq!(
            line(e),
            "INFO event=quarantined trigger=interval id=v2 serving_id=v1"
        );
    }

    #[test]
    fn update_done_unchanged() {
        let e = Event::UpdateDone {
            trigger: trigger(Reason::Interval),
            outcome: Outcome::Unchanged,
            serving: Some(child()),
            took: SECOND,
        };
        assert_eq!(line(e), "DEBUG event=unchanged trigger=interval id=v2");
    }

    #[test]
    fn update_done_rolled() {
        let e = Event::UpdateDone {
            trigger: trigger(Reason::Sighup),
            outcome: Outcome::Rolled(Duration::from_millis(17)),
            serving: Some(child()),
            took: SECOND,
        };
        assert_eq!(
            line(e),
            "INFO event=rolled trigger=sighup id=v2 slot=2 port=9102 pid=4242 took_ms=17"
        );
        let e = Event::UpdateDone {
            trigger: trigger(Reason::ChildExited),
            outcome: Outcome::Rolled(Duration::from_millis(17)),
            serving: None,
            took: SECOND,
        };
        assert_eq!(
            line(e),
            "WARN event=rolled trigger=child-exit took_ms=17 serving_id=none"
        );
    }

    #[test]
    fn update_done_failed() {
        let e = Event::UpdateDone {
            trigger: trigger(Reason::Sighup),
            outcome: Outcome::Failed(UpdateError::Pull(CommandError::TimedOut(SECOND))),
            serving: Some(child()),
            took: SECOND,
        };
        assert_eq!(
            line(e),
            "ERROR event=update_failed trigger=sighup step=pull error=\"--pull failed: timed out after 1s, process group killed\" serving_id=v2"
        );
        let e = Event::UpdateDone {
            trigger: trigger(Reason::Interval),
            outcome: Outcome::Failed(UpdateError::Unhealthy {
                port: 9101,
                pid: 77,
                error: HealthError::Exited(ExitStatus::from_raw(256)),
            }),
            serving: None,
            took: SECOND,
        };
        assert_eq!(
            line(e),
            "ERROR event=update_failed trigger=interval step=health port=9101 pid=77 error=\"new child exited before it was healthy (exit status: 1); it was terminated\" serving_id=none"
        );
        let e = Event::UpdateDone {
            trigger: trigger(Reason::Sighup),
            outcome: Outcome::Failed(UpdateError::NoSlot(vec![9101])),
            serving: Some(child()),
            took: SECOND,
        };
        assert_eq!(
            line(e),
            "ERROR event=update_failed trigger=sighup step=slot error=\"child port 9101 already in use by another process\" serving_id=v2"
        );
    }

    /// An ID is whatever `--id` printed: one that could pass for more
    /// fields (`v1 event=rolled`) is quoted wherever it is interpolated.
    #[test]
    fn ids_that_could_forge_fields_are_quoted() {
        let forged = "v1 event=forged ok=1";
        let quoted = r#""v1 event=forged ok=1""#;
        let mut bad = child();
        bad.id = forged.into();
        let lines = [
            line(Event::IdRead {
                id: forged.into(),
                serving: Some(forged.into()),
                forced: false,
                unchanged: false,
            }),
            line(Event::Healthy { child: bad.clone() }),
            line(Event::Promoted {
                new: bad.clone(),
                previous: bad.clone(),
                why: Promotion::Passed,
            }),
            line(Event::UpdateDone {
                trigger: trigger(Reason::Interval),
                outcome: Outcome::Rolled(SECOND),
                serving: Some(bad.clone()),
                took: SECOND,
            }),
            line(Event::UpdateDone {
                trigger: trigger(Reason::Interval),
                outcome: Outcome::Quarantined(forged.into()),
                serving: Some(bad),
                took: SECOND,
            }),
        ];
        for l in lines {
            assert!(l.contains(&format!("id={quoted}")), "{l}");
            let rest = l.replace(quoted, "");
            assert_eq!(rest.matches("event=").count(), 1, "{l}");
        }
    }

    #[test]
    fn unhealthy() {
        let e = Event::Unhealthy {
            port: 9101,
            failed_checks: 3,
        };
        assert_eq!(
            line(e),
            "WARN event=unhealthy port=9101 failed_checks=3 action=eject-and-replace"
        );
    }

    #[test]
    fn recovered() {
        let e = Event::Recovered {
            port: 9101,
            passed_checks: 2,
        };
        assert_eq!(line(e), "INFO event=recovered port=9101 passed_checks=2");
    }

    #[test]
    fn failing_while_shed() {
        let e = Event::FailingWhileShed {
            port: 9101,
            failed_checks: 3,
        };
        assert_eq!(
            line(e),
            "WARN event=unhealthy port=9101 failed_checks=3 action=replace"
        );
    }

    #[test]
    fn overloaded() {
        let e = Event::Overloaded {
            port: 9101,
            busy_checks: 3,
            inflight: 12,
            shed: false,
        };
        assert_eq!(
            line(e),
            "WARN event=overloaded port=9101 busy_checks=3 inflight=12 action=keep \
             reason=\"probes time out while it completes requests; no other child serves\""
        );
        let e = Event::Overloaded {
            port: 9101,
            busy_checks: 3,
            inflight: 12,
            shed: true,
        };
        assert_eq!(
            line(e),
            "WARN event=overloaded port=9101 busy_checks=3 inflight=12 action=out-of-rotation \
             reason=\"probes time out while it completes requests; another child serves\""
        );
    }

    #[test]
    fn probe_skipped() {
        let e = Event::ProbeSkipped { port: 9101 };
        assert_eq!(
            line(e),
            "DEBUG event=probe_skipped port=9101 reason=\"liveroll is out of file descriptors\""
        );
    }

    #[test]
    fn limits() {
        let e = Event::Limits {
            nofile: 4096,
            inherited_nofile: 1024,
            max_connections: 1952,
        };
        assert_eq!(
            line(e),
            "INFO event=limits nofile=4096 inherited_nofile=1024 max_connections=1952"
        );
        let e = Event::MaxConnectionsUnsafe {
            max_connections: 5000,
            safe: 1952,
            nofile: 4096,
        };
        assert_eq!(
            line(e),
            "WARN event=config_warning key=max-connections value=5000 safe=1952 \
             reason=\"each connection may need two of the 4096 descriptors: accept may fail with EMFILE\""
        );
    }

    #[test]
    fn ephemeral_port() {
        let e = Event::EphemeralPort {
            key: "child-port2",
            port: 40000,
            range: (32768, 60999),
        };
        assert_eq!(
            line(e),
            "WARN event=config_warning key=child-port2 value=40000 reason=\"inside the kernel's \
             ephemeral port range 32768-60999: outgoing connections may take it; pick a port \
             below 32768 or add it to net.ipv4.ip_local_reserved_ports\""
        );
    }

    #[test]
    fn signal() {
        let cases = [
            (SignalAction::ForcedUpdate, "SIGHUP", "action=forced-update"),
            (
                SignalAction::Ignored,
                "SIGHUP",
                "action=ignored reason=stopping",
            ),
            (SignalAction::Shutdown, "SIGTERM", "action=shutdown"),
            (SignalAction::ShutdownNow, "SIGINT", "action=shutdown-now"),
        ];
        for (action, name, tail) in cases {
            let e = Event::Signal { name, action };
            assert_eq!(line(e), format!("INFO event=signal signal={name} {tail}"));
        }
    }

    #[test]
    fn shutdown_delay() {
        let e = Event::ShutdownDelay {
            delay: Duration::from_secs(90),
        };
        assert_eq!(line(e), "INFO event=shutdown_delay delay=1m 30s");
    }

    #[test]
    fn stopping() {
        assert_eq!(line(Event::Stopping), "DEBUG event=stopping");
    }

    #[test]
    fn stopped() {
        let e = Event::Stopped {
            took: Duration::from_millis(250),
        };
        assert_eq!(line(e), "INFO event=stopped took_ms=250");
    }

    #[test]
    fn state_failed() {
        let e = Event::StateFailed {
            error: "No space left on device".into(),
        };
        assert_eq!(
            line(e),
            "ERROR event=state_failed error=\"No space left on device\""
        );
    }

    #[test]
    fn admin_failed() {
        let e = Event::AdminFailed {
            error: "bad \"fd\"".into(),
        };
        assert_eq!(line(e), "ERROR event=admin_failed error=\"bad \\\"fd\\\"\"");
    }

    #[test]
    fn fatal() {
        let e = Event::Fatal {
            error: "cannot install signal handlers: x".into(),
        };
        assert_eq!(
            line(e),
            "ERROR event=fatal error=\"cannot install signal handlers: x\""
        );
    }
}
