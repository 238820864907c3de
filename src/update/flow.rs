//! The update flow and the two child slots it manages.
//!
//! [`Rollout::update`] is the seed's diagram in code: pull, read the ID, stop
//! if nothing changed, start a child in a free slot, wait for its health
//! check, publish it, retire the previous generation. Whatever fails, the
//! children already serving are left alone.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use tokio::sync::mpsc;

use crate::serve::backends::{Backend, BackendSet};
use crate::process::child::Child;
use crate::process::command::{self as commands, CommandError};
use crate::config::Config;
use crate::process::probe::{self as health, HealthError};
use crate::report::metrics::{self, METRICS};
use crate::report::notify;
use crate::report::status::{ChildReport, Status, UpdateReport};
use crate::update::trigger::{Reason, Trigger, Triggers};

/// A child that ran at least this long before crashing resets the back-off.
const CRASH_RESET_AFTER: Duration = Duration::from_secs(60);
const MAX_CRASH_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum UpdateError {
    Pull(CommandError),
    Id(CommandError),
    NoSlot(String),
    Spawn(std::io::Error),
    Unhealthy {
        port: u16,
        pid: i32,
        error: HealthError,
    },
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Quoted with {:?} so stderr text cannot break the key=value line.
        match self {
            UpdateError::Pull(e) => {
                write!(f, "step=pull error={:?}", format!("--pull failed: {e}"))
            }
            UpdateError::Id(e) => write!(f, "step=id error={:?}", format!("--id failed: {e}")),
            UpdateError::NoSlot(why) => write!(f, "step=slot error={why:?}"),
            UpdateError::Spawn(e) => write!(
                f,
                "step=exec error={:?}",
                format!("--exec could not start: {e}")
            ),
            UpdateError::Unhealthy { port, pid, error } => write!(
                f,
                "step=health port={port} pid={pid} error={:?}",
                format!("new child {error}; it was terminated")
            ),
        }
    }
}

pub enum Outcome {
    Unchanged,
    /// The new child serves; how long that took from the trigger.
    Rolled(Duration),
}

/// A published child and its entry in the proxy's set.
struct Serving {
    child: Child,
    backend: Arc<Backend>,
}

pub struct Rollout {
    config: Arc<Config>,
    backends: Arc<BackendSet>,
    triggers: Arc<Triggers>,
    /// Children exiting report their generation here.
    exits: mpsc::UnboundedSender<u64>,
    status: Arc<Status>,
    slots: [Option<Serving>; 2],
    next_generation: u64,
    /// Children that died young in a row, and until when automatic updates
    /// wait because of it (a SIGHUP does not).
    crash_streak: u32,
    backoff_until: Option<Instant>,
}

impl Rollout {
    pub fn new(
        config: Arc<Config>,
        backends: Arc<BackendSet>,
        triggers: Arc<Triggers>,
        status: Arc<Status>,
        exits: mpsc::UnboundedSender<u64>,
    ) -> Self {
        Rollout {
            config,
            backends,
            triggers,
            exits,
            status,
            slots: [None, None],
            next_generation: 1,
            crash_streak: 0,
            backoff_until: None,
        }
    }

    /// Runs one update, then logs and reports its outcome.
    pub async fn run(&mut self, trigger: Trigger) {
        if self.status.is_stopping() {
            // A stop signal came (--shutdown-delay): start nothing new.
            debug!("event=skipped trigger={} reason=stopping", trigger.reason);
            return;
        }
        if !trigger.reload
            && self
                .backoff_until
                .is_some_and(|until| until > Instant::now())
        {
            // Children keep dying: the replacement is already scheduled.
            debug!("event=backoff trigger={}", trigger.reason);
            return;
        }
        let started = Instant::now();
        debug!(
            "event=update trigger={} forced={}",
            trigger.reason, trigger.forced
        );
        let result = self.update(trigger, started).await;
        let (outcome, error) = match &result {
            Ok(Outcome::Unchanged) => {
                debug!(
                    "event=unchanged trigger={} id={}",
                    trigger.reason,
                    self.serving_id()
                );
                METRICS.rollout(metrics::Rollout::Unchanged);
                ("unchanged", None)
            }
            Ok(Outcome::Rolled(took)) => {
                match self.current() {
                    Some(c) => info!(
                        "event=rolled trigger={} id={} slot={} port={} pid={} took_ms={}",
                        trigger.reason,
                        c.id,
                        c.slot + 1,
                        c.port,
                        c.pid,
                        took.as_millis()
                    ),
                    // It died again while the old one drained; its exit is handled next.
                    None => warn!(
                        "event=rolled trigger={} took_ms={} serving_id=none",
                        trigger.reason,
                        took.as_millis()
                    ),
                }
                METRICS.rollout(metrics::Rollout::Rolled(*took));
                ("rolled", None)
            }
            Err(e) => {
                error!(
                    "event=update_failed trigger={} {e} serving_id={}",
                    trigger.reason,
                    self.serving_id()
                );
                METRICS.rollout(metrics::Rollout::Failed);
                // A replacement that dies before it is healthy is a crash too;
                // a new version that does, while the old one serves, is not:
                // the next interval tries again, at the pace the operator set.
                let died = matches!(
                    e,
                    UpdateError::Unhealthy {
                        error: HealthError::Exited(_),
                        ..
                    }
                );
                if died && self.current().is_none() {
                    self.note_crash(Duration::ZERO);
                }
                ("failed", Some(e.to_string()))
            }
        };
        self.status.update_done(UpdateReport {
            trigger: trigger.reason.to_string(),
            result: outcome,
            error,
            duration_ms: started.elapsed().as_millis(),
        });
        // systemd: a reload (SIGHUP) ends with this update, whatever its result.
        if trigger.reload && notify::is_ready() {
            self.status.ready_phase(self.serving_text());
        } else {
            self.status.phase(self.serving_text());
        }
    }

    fn serving_id(&self) -> &str {
        self.current().map_or("none", |c| c.id.as_str())
    }

    fn serving_text(&self) -> String {
        match self.current() {
            Some(c) => format!("serving id={} port={} pid={}", c.id, c.port, c.pid),
            None => "no child serving".into(),
        }
    }

    /// A child died young (or before it was healthy): replacements wait 0 s,
    /// 1 s, 2 s, 4 s ... while this keeps happening, so a broken image never
    /// becomes a respawn storm.
    fn note_crash(&mut self, ran: Duration) {
        self.crash_streak = if ran >= CRASH_RESET_AFTER {
            0
        } else {
            self.crash_streak + 1
        };
        let delay = crash_backoff(self.crash_streak);
        self.backoff_until = Some(Instant::now() + delay);
        info!("event=replace_scheduled delay_ms={}", delay.as_millis());
        let triggers = self.triggers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            triggers.request(Reason::ChildExited);
        });
    }

    /// Tells [`Status`] which children exist, with the one being started or
    /// retired (no longer, or not yet, in a slot).
    fn report(&self, other: Option<(&Child, &'static str)>) {
        let mut reports: Vec<ChildReport> = self
            .slots
            .iter()
            .flatten()
            .map(|s| child_report(&s.child, "serving", Some(s.backend.clone())))
            .collect();
        reports.extend(other.map(|(child, state)| child_report(child, state, None)));
        self.status.children(reports);
    }

    /// One update, top to bottom like the seed's diagram.
    pub async fn update(
        &mut self,
        trigger: Trigger,
        started: Instant,
    ) -> Result<Outcome, UpdateError> {
        let c = self.config.clone();

        // 1. Pull the artifact, then ask for its ID.
        self.status
            .phase(format!("pulling (trigger={})", trigger.reason));
        commands::run(&c.pull, c.command_timeout, 0)
            .await
            .map_err(UpdateError::Pull)?;
        let out = commands::run(&c.id, c.command_timeout, commands::MAX_ID_BYTES).await;
        let id = out
            .and_then(|out| commands::parse_id(&out))
            .map_err(UpdateError::Id)?;

        // 2. Not forced and this ID already serves: nothing to do.
        if !trigger.forced && self.current().is_some_and(|cur| cur.id == id) {
            debug!("event=id id={id}");
            return Ok(Outcome::Unchanged);
        }
        info!(
            "event=id id={id} serving_id={} forced={}",
            self.serving_id(),
            trigger.forced
        );

        // 3. A free slot, retiring the non-current child if both are taken.
        let slot = self.free_slot().await?;

        // 4. Start the new child in its own process group.
        let child = self.spawn(slot, &id).map_err(UpdateError::Spawn)?;
        self.status
            .phase(format!("starting id={id} port={}", child.port));
        self.report(Some((&child, "starting")));

        // 5. Wait for its health check; if it fails, it goes and the old one stays.
        if let Err(error) = health::wait_healthy(&child, &c.healthcheck, c.health_timeout).await {
            child.terminate(c.kill_timeout).await;
            self.report(None);
            return Err(UpdateError::Unhealthy {
                port: child.port,
                pid: child.pid,
                error,
            });
        }
        info!(
            "event=healthy slot={} port={} pid={} id={id}",
            slot + 1,
            child.port,
            child.pid
        );

        // 6. Publish it to the proxy; its ID is now the current one.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, child.port));
        let backend = Backend::new(addr, child.generation);
        self.backends.publish(backend.clone());
        info!(
            "event=publish slot={} port={} pid={} id={id}",
            slot + 1,
            child.port,
            child.pid
        );
        self.slots[slot] = Some(Serving { child, backend });
        self.report(None);
        let took = started.elapsed();
        if !notify::is_ready() {
            // systemd: startup is done once the first child serves.
            self.status.ready_phase(self.serving_text());
        }

        // 7. Retire the previous generation: every other child.
        for other in 0..self.slots.len() {
            if other != slot {
                self.retire(other).await;
            }
        }
        Ok(Outcome::Rolled(took))
    }

    /// The newest child that serves (published, alive, passing its checks):
    /// its ID is the current one. With none, any update goes ahead.
    fn current(&self) -> Option<&Child> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.backend.is_serving())
            .map(|s| &s.child)
            .max_by_key(|c| c.generation)
    }

    /// An empty slot whose port nobody else holds. Every update retires all
    /// other children, so at most one slot is ever taken here; the seed's
    /// "retire the non-current one when both are busy" cannot arise.
    async fn free_slot(&mut self) -> Result<usize, UpdateError> {
        let ports = self.config.child_ports();
        let mut busy = Vec::new();
        for slot in (0..self.slots.len()).filter(|&s| self.slots[s].is_none()) {
            if port_is_free(ports[slot]) {
                return Ok(slot);
            }
            busy.push(ports[slot].to_string());
        }
        Err(UpdateError::NoSlot(format!(
            "child port {} already in use by another process",
            busy.join(" and ")
        )))
    }

    fn spawn(&mut self, slot: usize, id: &str) -> std::io::Result<Child> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let port = self.config.child_ports()[slot];
        let cmd = commands::expand(&self.config.exec, port, &self.config.healthcheck);
        let backends = self.backends.clone();
        let exits = self.exits.clone();
        let child = Child::spawn(&cmd, slot, port, id, generation, move |_status| {
            // Out of the proxy at once; the supervisor decides the rest.
            backends.remove(generation);
            let _ = exits.send(generation);
        })?;
        info!(
            "event=spawn slot={} port={port} pid={} id={id} cmd={cmd:?}",
            slot + 1,
            child.pid
        );
        Ok(child)
    }

    /// Takes a child out of the proxy, lets its requests finish (bounded by
    /// `--drain-timeout`), then terminates its process group.
    async fn retire(&mut self, slot: usize) {
        let Some(Serving { child, .. }) = self.slots[slot].take() else {
            return;
        };
        if let Some(status) = child.exit_status() {
            // It died while the update that replaces it was running.
            warn!(
                "event=exit unexpected=true slot={} port={} pid={} id={} status={:?}",
                slot + 1,
                child.port,
                child.pid,
                child.id,
                status.to_string()
            );
            METRICS.child_restart();
        }
        self.report(Some((&child, "draining")));
        if let Some(backend) = self.backends.remove(child.generation) {
            self.status
                .phase(format!("draining port={} pid={}", child.port, child.pid));
            info!(
                "event=drain slot={} port={} pid={} id={} inflight={}",
                slot + 1,
                child.port,
                child.pid,
                child.id,
                backend.inflight()
            );
            if !backend.drained(self.config.drain_timeout).await {
                warn!(
                    "event=drain_timeout port={} pid={} inflight={} after={:?}",
                    child.port,
                    child.pid,
                    backend.inflight(),
                    self.config.drain_timeout
                );
            }
        }
        child.terminate(self.config.kill_timeout).await;
        self.report(None);
    }

    /// A child's shell exited. If it was still serving, it crashed: clean up
    /// what is left of its group and schedule its replacement.
    pub async fn child_exited(&mut self, generation: u64) {
        let Some(slot) = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.child.generation == generation))
        else {
            return; // retired or failed on purpose
        };
        let Serving { child, .. } = self.slots[slot].take().expect("slot was just found");
        let ran = child.started.elapsed();
        warn!(
            "event=exit unexpected=true slot={} port={} pid={} id={} status={:?} ran_ms={}",
            slot + 1,
            child.port,
            child.pid,
            child.id,
            child
                .exit_status()
                .map_or_else(|| "unknown".into(), |s| s.to_string()),
            ran.as_millis()
        );
        METRICS.child_restart();
        child.terminate(self.config.kill_timeout).await;
        self.report(None);
        self.status.phase(self.serving_text());
        self.note_crash(ran);
    }
}

fn child_report(child: &Child, state: &'static str, backend: Option<Arc<Backend>>) -> ChildReport {
    ChildReport {
        slot: child.slot,
        port: child.port,
        pid: child.pid,
        id: child.id.clone(),
        state,
        backend,
    }
}

/// No pause for the first crash, then 1 s, 2 s, 4 s, ... up to 30 s.
fn crash_backoff(streak: u32) -> Duration {
    match streak {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1 << (n - 2).min(5)).min(MAX_CRASH_BACKOFF),
    }
}

/// Whether a child could bind `port`: catches a stray process (an orphan of
/// an earlier run, another service) before its health check could be
/// mistaken for our child's.
fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_backoff_grows_and_caps() {
        let secs: Vec<u64> = (0..10).map(|n| crash_backoff(n).as_secs()).collect();
        assert_eq!(secs, [0, 0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_listening_port_is_not_free() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!port_is_free(port));
        drop(listener);
        assert!(port_is_free(port));
    }
}
