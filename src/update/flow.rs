//! The update flow and what happens to children around it.
//!
//! [`Engine::update`] is the seed's diagram in code: pull, read the ID, stop
//! if nothing changed, start a child in a free slot, wait for its health
//! check, publish it, retire the previous generation. Whatever fails, the
//! children already serving are left alone. The engine emits an event at
//! each step and leaves every word of reporting to the reporter.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::backoff::Backoff;
use super::error::UpdateError;
use super::slots::{ChildInfo, ChildView, Slots, State};
use super::trigger::{Reason, Trigger, Triggers};
use crate::config::Config;
use crate::process::child::Child;
use crate::process::command;
use crate::process::group::Ending;
use crate::process::probe;
use crate::report::event::{Event, Outcome};
use crate::report::reporter::Reporter;
use crate::serve::backends::{Backend, BackendSet};
use crate::signals::Stop;

pub struct Engine {
    config: Arc<Config>,
    backends: Arc<BackendSet>,
    triggers: Arc<Triggers>,
    reporter: Arc<Reporter>,
    stop: watch::Receiver<Stop>,
    /// Children exiting report their generation here.
    exits: mpsc::UnboundedSender<u64>,
    slots: Slots<Child>,
    next_generation: u64,
    backoff: Backoff,
}

impl Engine {
    pub fn new(
        config: Arc<Config>,
        backends: Arc<BackendSet>,
        triggers: Arc<Triggers>,
        reporter: Arc<Reporter>,
        stop: watch::Receiver<Stop>,
        slots: Slots<Child>,
        exits: mpsc::UnboundedSender<u64>,
    ) -> Self {
        Engine {
            config,
            backends,
            triggers,
            reporter,
            stop,
            exits,
            slots,
            next_generation: 1,
            backoff: Backoff::default(),
        }
    }

    /// Until when automatic updates wait because children keep dying.
    pub fn backoff_until(&self) -> Option<tokio::time::Instant> {
        self.backoff.until()
    }

    fn emit(&self, event: Event) {
        self.reporter.emit(event);
    }

    /// Runs one update and reports how it ended.
    pub async fn run(&mut self, trigger: Trigger) {
        if *self.stop.borrow() != Stop::Running {
            // A stop signal came (--shutdown-delay): start nothing new.
            self.emit(Event::Skipped {
                trigger: trigger.reason,
            });
            return;
        }
        let started = Instant::now();
        self.emit(Event::UpdateStarted { trigger });
        let outcome = match self.update(trigger, started).await {
            Ok(outcome) => outcome,
            Err(error) => {
                // A replacement that dies before it is healthy is a crash too;
                // a new version that does, while the old one serves, is not:
                // the next interval tries again, at the pace the operator set.
                if error.child_died() && self.slots.current().is_none() {
                    self.crashed(Duration::ZERO);
                }
                Outcome::Failed(error)
            }
        };
        self.emit(Event::UpdateDone {
            trigger,
            outcome,
            serving: self.slots.current().cloned(),
            took: started.elapsed(),
        });
    }

    /// One update, top to bottom like the seed's diagram.
    async fn update(&mut self, trigger: Trigger, started: Instant) -> Result<Outcome, UpdateError> {
        let c = self.config.clone();

        // 1. Pull the artifact, then ask for its ID.
        self.emit(Event::Pulling {
            trigger: trigger.reason,
        });
        command::run(&c.pull, c.command_timeout, 0)
            .await
            .map_err(UpdateError::Pull)?;
        let out = command::run(&c.id, c.command_timeout, command::MAX_ID_BYTES).await;
        let id = out
            .and_then(|out| command::parse_id(&out))
            .map_err(UpdateError::Id)?;

        // 2. Not forced and this ID already serves: nothing to do.
        let serving = self.slots.current().map(|c| c.id.clone());
        let unchanged = !trigger.forced && serving.as_deref() == Some(id.as_str());
        self.emit(Event::IdRead {
            id: id.clone(),
            serving,
            forced: trigger.forced,
            unchanged,
        });
        if unchanged {
            return Ok(Outcome::Unchanged);
        }

        // 3. A free slot: empty, and its port held by nobody else.
        let slot = self.slots.free(port_is_free).map_err(UpdateError::NoSlot)?;

        // 4. Start the new child in its own process group.
        let child = self.spawn(slot, &id).map_err(UpdateError::Spawn)?;

        // 5. Wait for its health check; if it fails, it goes and the old one stays.
        let process = &self.slots.get(slot).expect("just started").process;
        if let Err(error) =
            probe::wait_healthy(process, child.port, &c.healthcheck, c.health_timeout).await
        {
            self.terminate(slot).await;
            return Err(UpdateError::Unhealthy {
                port: child.port,
                pid: child.pid,
                error,
            });
        }
        self.emit(Event::Healthy {
            child: child.clone(),
        });

        // 6. Publish it to the proxy; its ID is now the current one.
        let backend = Backend::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, child.port)),
            child.generation,
        );
        self.backends.publish(backend.clone());
        self.slots.set_state(slot, State::Serving, Some(backend));
        self.emit(Event::Published { child });
        let took = started.elapsed();

        // 7. Retire the previous generation: every other child.
        for other in self.slots.others(slot) {
            self.retire(other).await;
        }
        Ok(Outcome::Rolled(took))
    }

    /// Starts `--exec` for `slot` and records the child there as starting.
    fn spawn(&mut self, slot: usize, id: &str) -> std::io::Result<ChildInfo> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let port = self.slots.port(slot);
        let cmd = command::expand(&self.config.exec, port, &self.config.healthcheck);
        let (backends, exits) = (self.backends.clone(), self.exits.clone());
        let process = Child::spawn(&cmd, move |_status| {
            // Out of the proxy at once; the engine decides the rest.
            backends.remove(generation);
            let _ = exits.send(generation);
        })?;
        let info = ChildInfo {
            slot,
            port,
            pid: process.pid,
            id: id.to_string(),
            generation,
        };
        self.slots.start(slot, process, info.clone());
        self.emit(Event::Spawned {
            child: info.clone(),
            cmd,
        });
        Ok(info)
    }

    /// Takes a child out of the proxy, lets its requests finish (bounded by
    /// `--drain-timeout`), then terminates its process group.
    async fn retire(&mut self, slot: usize) {
        let Some(occupant) = self.slots.get(slot) else {
            return;
        };
        let child = occupant.view.info.clone();
        if let Some(status) = occupant.process.exit_status() {
            // It died while the update that replaces it was running.
            self.emit(Event::Exited {
                child: child.clone(),
                status: Some(status),
                ran: None,
                serving: self.slots.current().cloned(),
            });
        }
        self.slots.set_state(slot, State::Draining, None);
        if let Some(backend) = self.backends.remove(child.generation) {
            self.emit(Event::Draining {
                child: child.clone(),
                inflight: backend.inflight(),
            });
            let timeout = self.config.drain_timeout;
            if !backend.drained(tokio::time::Instant::now() + timeout).await {
                self.emit(Event::DrainTimeout {
                    child,
                    inflight: backend.inflight(),
                    after: timeout,
                });
            }
        }
        self.terminate(slot).await;
    }

    /// Stops a slot's child's process group and empties the slot.
    async fn terminate(&mut self, slot: usize) {
        let Some(occupant) = self.slots.get(slot) else {
            return;
        };
        let child = occupant.view.info.clone();
        let kill_timeout = self.config.kill_timeout;
        let termination = occupant.process.terminate(kill_timeout).await;
        if termination.ending == Ending::Killed {
            self.emit(Event::Killed {
                child: child.clone(),
                after: kill_timeout,
            });
        }
        self.slots.clear(slot);
        self.emit(Event::Terminated {
            child,
            status: termination.status,
        });
    }

    /// A child's shell exited. If it was serving, it crashed: clean up what
    /// is left of its group and have it replaced.
    pub async fn child_exited(&mut self, generation: u64) {
        // Retired or failed on purpose, or still starting (its health check
        // sees the exit): nothing to do here.
        let Some(slot) = self.slots.find(generation) else {
            return;
        };
        let occupant = self.slots.get(slot).expect("just found");
        if occupant.view.state != State::Serving {
            return;
        }
        let ran = occupant.process.started.elapsed();
        self.emit(Event::Exited {
            child: occupant.view.info.clone(),
            status: occupant.process.exit_status(),
            ran: Some(ran),
            serving: self.slots.current().cloned(),
        });
        self.terminate(slot).await;
        self.crashed(ran);
    }

    /// A child died after running for `ran`: its replacement is requested at
    /// once and runs when the back-off allows.
    fn crashed(&mut self, ran: Duration) {
        let delay = self.backoff.crashed(ran);
        self.emit(Event::ReplaceScheduled { delay });
        self.triggers.request(Reason::ChildExited);
    }

    /// Shutdown: waits (until `deadline`) for requests in flight on every
    /// child, then stops them all, those still starting or draining too.
    pub async fn stop_all(&mut self, deadline: tokio::time::Instant) {
        // Until no child has a request in flight, all at the same moment: a
        // request admitted late, or a retry, may lease one already seen idle.
        loop {
            let mut idle = true;
            for view in self.views() {
                let Some(backend) = view.backend else {
                    continue;
                };
                if backend.inflight() > 0 {
                    idle = false;
                    if !backend.drained(deadline).await {
                        self.emit(Event::DrainTimeout {
                            child: view.info,
                            inflight: backend.inflight(),
                            after: self.config.drain_timeout,
                        });
                    }
                }
            }
            if !self.backends.unanswered(deadline).await {
                idle = false;
            }
            if idle || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        // Both at once: each may wait out its own kill timeout.
        let kill_timeout = self.config.kill_timeout;
        let [first, second] = [0, 1].map(|slot| {
            self.slots
                .get(slot)
                .map(|o| o.process.terminate(kill_timeout))
        });
        let (first, second) = tokio::join!(maybe(first), maybe(second));
        for (slot, termination) in [(0, first), (1, second)] {
            let Some(termination) = termination else {
                continue;
            };
            let child = self.slots.clear(slot).expect("occupied").view.info;
            if termination.ending == Ending::Killed {
                self.emit(Event::Killed {
                    child: child.clone(),
                    after: kill_timeout,
                });
            }
            self.emit(Event::Terminated {
                child,
                status: termination.status,
            });
        }
    }

    fn views(&self) -> Vec<ChildView> {
        self.slots.watch().borrow().to_vec()
    }
}

async fn maybe<F: std::future::Future>(future: Option<F>) -> Option<F::Output> {
    match future {
        Some(future) => Some(future.await),
        None => None,
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
    fn a_listening_port_is_not_free() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!port_is_free(port));
        drop(listener);
        assert!(port_is_free(port));
    }
}
