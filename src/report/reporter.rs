//! The one place events become what operators see: each event is turned
//! into its log line, its metrics, its part of `/status` and its systemd
//! message, here and nowhere else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;
use tokio::sync::watch;

use super::event::{Event, Outcome, SignalAction};
use super::metrics::{self, METRICS};
use super::notify;
use super::status::{self, UpdateRecord};
use crate::config::Config;
use crate::update::control::Command;
use crate::update::slots::{self, ChildInfo, ChildView};

pub struct Reporter {
    state: Mutex<State>,
    /// The engine's record of children.
    children: watch::Receiver<Arc<[ChildView]>>,
    config: Value,
}

#[derive(Default)]
struct State {
    /// What is happening now, as `systemctl status` shows it.
    phase: String,
    stopping: bool,
    /// READY=1 was sent: startup is over.
    ready_sent: bool,
    /// A new liveroll process took over: this one is no longer the
    /// service's main process and tells systemd nothing more.
    handed_over: bool,
    last_update: Option<UpdateRecord>,
    bake: Option<status::BakeRecord>,
    last_rollback: Option<status::RollbackRecord>,
    paused: bool,
    /// Updates started so far: the number of the last one.
    updates: u64,
    /// Updates that rolled to a new child.
    rollouts: u64,
    /// When each child (by generation) was started, until it is gone.
    started_at: HashMap<u64, SystemTime>,
}

impl Reporter {
    pub fn new(config: &Config, children: watch::Receiver<Arc<[ChildView]>>) -> Self {
        Reporter {
            state: Mutex::default(),
            children,
            config: status::effective_config(config),
        }
    }

    pub fn emit(&self, event: Event) {
        event.log();
        let mut state = self.state.lock().unwrap();
        match event {
            Event::UpdateStarted { .. } => state.updates += 1,
            Event::Pulling { trigger } => state.phase(format!("pulling (trigger={trigger})")),
            Event::Spawned { child, .. } => {
                state.started_at.insert(child.generation, SystemTime::now());
                state.phase(format!("starting id={} port={}", child.id, child.port))
            }
            Event::Terminated { child, .. } => {
                state.started_at.remove(&child.generation);
            }
            // systemd: startup is done once the first child serves.
            Event::Published { child } if !state.ready_sent => state.ready(serving(Some(&child))),
            // After a restart, an adopted child serves at once. (On an
            // upgrade, READY=1 waits for the old process's MAINPID=.)
            Event::Adopted {
                child,
                upgrade: false,
            } if !state.ready_sent => state.ready(serving(Some(&child))),
            Event::Draining { child, .. } => {
                state.phase(format!("draining port={} pid={}", child.port, child.pid))
            }
            Event::Exited { serving: now, .. } => {
                METRICS.child_restart();
                state.phase(serving(now.as_ref()));
            }
            Event::UpdateDone {
                trigger,
                outcome,
                serving: now,
                took,
            } => {
                let (result, failure) = match &outcome {
                    Outcome::Unchanged => {
                        METRICS.rollout(metrics::Rollout::Unchanged);
                        ("unchanged", None)
                    }
                    Outcome::Quarantined(_) => {
                        METRICS.rollout(metrics::Rollout::Quarantined);
                        ("quarantined", None)
                    }
                    Outcome::Rolled(took) => {
                        METRICS.rollout(metrics::Rollout::Rolled(*took));
                        state.rollouts += 1;
                        ("rolled", None)
                    }
                    Outcome::Failed(e) => {
                        METRICS.rollout(metrics::Rollout::Failed);
                        ("failed", Some((e.step().as_str(), e.to_string())))
                    }
                };
                state.last_update = Some(UpdateRecord {
                    number: state.updates,
                    at: SystemTime::now(),
                    trigger: trigger.reason.to_string(),
                    result,
                    failure,
                    duration_ms: took.as_millis(),
                });
                // systemd: a reload (SIGHUP) ends with this update, whatever
                // its result.
                if trigger.reload && state.ready_sent {
                    state.ready(serving(now.as_ref()));
                } else {
                    state.phase(serving(now.as_ref()));
                }
            }
            Event::BakeStarted {
                new,
                previous,
                window,
                canary,
            } => {
                state.bake = Some(status::BakeRecord {
                    id: new.id,
                    previous_id: previous.id,
                    until: SystemTime::now() + window,
                    canary,
                });
            }
            Event::Promoted { .. } => state.bake = None,
            Event::RolledBack {
                rule,
                new,
                previous,
                evidence,
            } => {
                METRICS.rollback(rule.as_str());
                state.bake = None;
                state.last_rollback = Some(status::RollbackRecord {
                    at: SystemTime::now(),
                    id: new.id.clone(),
                    previous_id: previous.id.clone(),
                    rule: rule.as_str(),
                    evidence: evidence.to_string(),
                });
                state.phase(format!(
                    "rolled back id={} ({}): {}",
                    new.id,
                    rule.as_str(),
                    serving(Some(&previous))
                ));
            }
            Event::Control {
                command,
                answer: Ok(_),
            } => match command {
                Command::Pause => state.paused = true,
                Command::Resume => state.paused = false,
                _ => {}
            },
            // Before the first READY=1 systemd is still starting the service
            // and takes no reload.
            Event::Signal {
                action: SignalAction::ForcedUpdate,
                ..
            } if state.ready_sent => notify::reloading(),
            Event::Signal {
                action: SignalAction::Shutdown,
                ..
            }
            | Event::Stopping => state.stopping(),
            // The old process said MAINPID= before this; from now on only
            // the new one speaks to systemd.
            Event::HandedOver { .. } => {
                state.handed_over = true;
                state.phase = "handed over to a new liveroll process; draining".into();
            }
            // The new process: serving since the old one handed over.
            Event::Upgraded { .. } => {
                let children = self.children.borrow().clone();
                state.ready(serving(slots::current(children.iter()).map(|c| &c.info)));
            }
            _ => {}
        }
    }

    /// Ready for traffic: a child serves and liveroll is not stopping.
    pub fn ready(&self) -> bool {
        !self.state.lock().unwrap().stopping
            && slots::current(self.children.borrow().iter()).is_some()
    }

    /// How many updates have started: the next one gets this plus one.
    pub fn updates_started(&self) -> u64 {
        self.state.lock().unwrap().updates
    }

    /// The ID of the current child.
    pub fn current_id(&self) -> Option<String> {
        slots::current(self.children.borrow().iter()).map(|c| c.info.id.clone())
    }

    /// Each running child's request figures, for `/metrics`.
    pub fn child_figures(&self) -> Vec<super::child_metrics::ChildFigures> {
        let children = self.children.borrow();
        children
            .iter()
            .filter_map(|c| {
                let backend = c.backend.as_ref()?;
                Some(super::child_metrics::ChildFigures {
                    id: c.info.id.clone(),
                    generation: c.info.generation,
                    stats: backend.stats.snapshot(),
                })
            })
            .collect()
    }

    /// The `/status` document.
    pub fn status(&self) -> Value {
        let state = self.state.lock().unwrap();
        let children = self.children.borrow().clone();
        status::render(&status::Snapshot {
            phase: &state.phase,
            stopping: state.stopping,
            children: &children,
            last_update: state.last_update.as_ref(),
            bake: state.bake.as_ref(),
            last_rollback: state.last_rollback.as_ref(),
            paused: state.paused,
            rollouts: state.rollouts,
            started_at: &state.started_at,
            config: &self.config,
        })
    }
}

impl State {
    /// A new phase, told to systemd when it changed (and never after stopping).
    fn phase(&mut self, text: String) {
        if self.phase != text && !self.stopping && !self.handed_over {
            notify::status(&text);
            self.phase = text;
        }
    }

    /// Like [`phase`](Self::phase), telling systemd in the same message that
    /// liveroll is ready (startup done, or a reload finished).
    fn ready(&mut self, text: String) {
        if !self.stopping && !self.handed_over {
            notify::ready(&text);
            self.ready_sent = true;
            self.phase = text;
        }
    }

    /// Liveroll is shutting down: not ready any more (said once).
    fn stopping(&mut self) {
        if !self.stopping && !self.handed_over {
            self.stopping = true;
            self.phase = "stopping".into();
            notify::stopping();
        }
    }
}

/// The phase text for what serves.
fn serving(child: Option<&ChildInfo>) -> String {
    match child {
        Some(c) => format!("serving id={} port={} pid={}", c.id, c.port, c.pid),
        None => "no child serving".into(),
    }
}
