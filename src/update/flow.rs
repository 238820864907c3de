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
use super::bake::{Evidence, Rule, Rules};
use super::control::{Answer, Command};
use super::error::UpdateError;
use super::slots::{ChildInfo, ChildView, Slots, State};
use super::state::{Saved, SavedChild, StateFile};
use super::trigger::{Reason, Trigger, Triggers};
use super::upgrade::{self, Handover};
use crate::config::Config;
use crate::process::adopt::{self, Candidate, Refusal};
use crate::process::child::{Child, Termination};
use crate::process::listener::{self, Listening};
use crate::process::tree::{Ending, Tree};
use crate::process::{command, probe, procfs};
use crate::report::event::{Event, Outcome, Promotion, SkipWhy, StopReason};
use crate::report::reporter::Reporter;
use crate::serve::backends::{Backend, BackendSet, Canary};
use crate::serve::stats::Snapshot;
use crate::signals::Stop;

/// What the engine works with besides its own state.
pub struct Parts {
    pub config: Arc<Config>,
    pub backends: Arc<BackendSet>,
    pub triggers: Arc<Triggers>,
    pub reporter: Arc<Reporter>,
    pub stop: watch::Receiver<Stop>,
    pub state: StateFile,
    /// For an upgrade of this process.
    pub handover: Arc<Handover>,
}

pub struct Engine {
    config: Arc<Config>,
    backends: Arc<BackendSet>,
    triggers: Arc<Triggers>,
    reporter: Arc<Reporter>,
    stop: watch::Receiver<Stop>,
    state: StateFile,
    handover: Arc<Handover>,
    slots: Slots<Child>,
    /// Children exiting report their generation here.
    exits: mpsc::UnboundedSender<u64>,
    next_generation: u64,
    backoff: Backoff,
    /// This liveroll's part of every child's marker (`TOKEN.GENERATION`):
    /// another liveroll's children never carry it.
    token: String,
    /// The ID last started in each slot, for `<<ID>>` when `--stop` runs
    /// for a slot that is empty by then.
    last_ids: [String; 2],
    /// The new child under judgement, while a bake window is open.
    bake: Option<Bake>,
    /// The serving child's figures over the last minutes: the baseline a
    /// new child is judged against.
    samples: Samples,
    /// An ID rolled back from: automatic updates skip it until `--id`
    /// prints another one.
    quarantined: Option<String>,
    /// The ID that served before the current one (a different one), for an
    /// operator's rollback after the bake window.
    previous_id: Option<String>,
    /// Automatic (interval) updates are paused.
    paused: bool,
}

/// An open bake window.
struct Bake {
    new: usize,
    previous: usize,
    until: tokio::time::Instant,
    /// The previous child's figures over its last minutes before the window.
    baseline: Option<Snapshot>,
}

/// How often the figures of the serving child are sampled, and how far back
/// a baseline reaches.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const BASELINE_SPAN: Duration = Duration::from_secs(300);
/// How often an open bake window is judged.
const JUDGE_EVERY: Duration = Duration::from_millis(100);

/// Snapshots of one child's figures, oldest first, at most `BASELINE_SPAN` old.
#[derive(Default)]
struct Samples {
    generation: u64,
    taken: std::collections::VecDeque<(tokio::time::Instant, Snapshot)>,
}

impl Samples {
    fn take(&mut self, generation: u64, now: tokio::time::Instant, snapshot: Snapshot) {
        if generation != self.generation {
            self.generation = generation;
            self.taken.clear();
        }
        if self
            .taken
            .back()
            .is_some_and(|(at, _)| now - *at < SAMPLE_EVERY)
        {
            return;
        }
        self.taken.push_back((now, snapshot));
        while self
            .taken
            .front()
            .is_some_and(|(at, _)| now - *at > BASELINE_SPAN)
        {
            self.taken.pop_front();
        }
    }

    /// What child `generation` did over the sampled span up to `now`.
    fn baseline(&self, generation: u64, now: Snapshot) -> Option<Snapshot> {
        let (_, oldest) = self
            .taken
            .front()
            .filter(|_| self.generation == generation)?;
        Some(now.since(oldest))
    }
}

impl Engine {
    pub fn new(parts: Parts, slots: Slots<Child>, exits: mpsc::UnboundedSender<u64>) -> Self {
        Engine {
            config: parts.config,
            backends: parts.backends,
            triggers: parts.triggers,
            reporter: parts.reporter,
            stop: parts.stop,
            state: parts.state,
            handover: parts.handover,
            slots,
            exits,
            next_generation: 1,
            backoff: Backoff::default(),
            token: new_token(),
            last_ids: Default::default(),
            bake: None,
            samples: Samples::default(),
            quarantined: None,
            previous_id: None,
            paused: false,
        }
    }

    fn rules(&self) -> Rules {
        Rules {
            error_rate: self.config.rollback_error_rate / 100.0,
            min_requests: self.config.rollback_min_requests,
            latency_factor: self.config.rollback_latency_factor,
        }
    }

    /// When [`tick`](Self::tick) is due next.
    pub fn next_tick(&self) -> tokio::time::Instant {
        let every = if self.bake.is_some() {
            JUDGE_EVERY
        } else {
            SAMPLE_EVERY
        };
        tokio::time::Instant::now() + every
    }

    /// Samples the serving child's figures, and judges an open bake window.
    pub async fn tick(&mut self) {
        let now = tokio::time::Instant::now();
        if let Some(current) = self.current_view() {
            if let Some(backend) = &current.backend {
                self.samples
                    .take(current.info.generation, now, backend.stats.snapshot());
            }
        }
        self.judge_bake().await;
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
        self.run_to(trigger, None).await;
    }

    /// Runs one update, to `id` if given (an operator's rollback: no pull,
    /// no `--id`, no bake), and reports how it ended.
    async fn run_to(&mut self, trigger: Trigger, id: Option<String>) {
        let skip = if *self.stop.borrow() != Stop::Running {
            // A stop signal came (--shutdown-delay): start nothing new.
            Some(SkipWhy::Stopping)
        } else if self.paused && trigger.reason == Reason::Interval {
            Some(SkipWhy::Paused)
        } else {
            None
        };
        if let Some(why) = skip {
            self.emit(Event::Skipped {
                trigger: trigger.reason,
                why,
            });
            return;
        }
        // A breach found now is acted on before anything else.
        self.judge_bake().await;
        let started = Instant::now();
        self.emit(Event::UpdateStarted { trigger });
        let result = match id {
            Some(id) => self.roll_to(&id, started, false).await,
            None => self.update(trigger, started).await,
        };
        let outcome = match result {
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

        // 2. Not forced and this ID already serves: nothing to do. Nor for
        //    an ID rolled back from, while something else serves.
        let serving = self.slots.current().map(|c| c.id.clone());
        let unchanged = !trigger.forced && serving.as_deref() == Some(id.as_str());
        self.emit(Event::IdRead {
            id: id.clone(),
            serving: serving.clone(),
            forced: trigger.forced,
            unchanged,
        });
        if unchanged {
            return Ok(Outcome::Unchanged);
        }
        if self.quarantined.as_ref().is_some_and(|q| *q != id) {
            self.quarantined = None;
            self.persist();
        }
        if !trigger.forced && serving.is_some() && self.quarantined.as_ref() == Some(&id) {
            return Ok(Outcome::Quarantined(id));
        }
        self.roll_to(&id, started, true).await
    }

    /// Steps 3 to 7: start a child for `id`, check it, publish it, and bake
    /// it against the previous one (if `bake` and `--bake` say so) or retire
    /// the previous one at once.
    async fn roll_to(
        &mut self,
        id: &str,
        started: Instant,
        bake: bool,
    ) -> Result<Outcome, UpdateError> {
        let c = self.config.clone();

        // 3. A free slot: empty, and its port held by nobody else. A child
        //    still baking is kept as the one to compare with, and the
        //    previous one goes.
        if self.bake.is_some() {
            self.promote(Promotion::Superseded).await;
        }
        let slot = self.free_slot().await?;

        // 4. Start the new child in its own process group.
        let child = self.spawn(slot, id)?;

        // 5. Wait for its health check, and make sure it was the child that
        //    answered; if not, it goes and the old one stays.
        let process = &self.slots.get(slot).expect("just started").process;
        let health = probe::wait_healthy(process, child.port, &c.healthcheck, c.health_timeout);
        let checked = match health.await {
            Ok(()) => self.verify_listener(&child),
            Err(error) => Err(UpdateError::Unhealthy {
                port: child.port,
                pid: child.pid,
                error,
            }),
        };
        if let Err(error) = checked {
            self.terminate(slot, StopReason::Failed).await;
            return Err(error);
        }
        self.emit(Event::Healthy {
            child: child.clone(),
        });

        // 6. Publish it to the proxy; its ID is now the current one.
        let previous = self.current_view().filter(|p| p.info.slot != slot);
        if let Some(previous) = previous.as_ref().filter(|p| p.info.id != id) {
            self.previous_id = Some(previous.info.id.clone());
        }
        let backend = Backend::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, child.port)),
            child.generation,
        );
        // Recorded as serving before a client can reach it: a liveroll
        // killed right after its first request was answered left a child
        // the next one may adopt, not one it must stop.
        self.slots
            .set_state(slot, State::Serving, Some(backend.clone()));
        self.persist();
        self.backends.publish(backend.clone());
        // Its figures count from now (the baseline when it is the previous
        // one); recorded once the previous child's baseline is taken.
        let first_sample = (
            child.generation,
            tokio::time::Instant::now(),
            backend.stats.snapshot(),
        );
        self.emit(Event::Published { child });
        let took = started.elapsed();

        // 7. Keep the previous generation warm while the new one bakes, or
        //    retire it at once: every other child.
        let baking = bake && !c.bake.is_zero();
        match previous {
            Some(previous) if baking => {
                self.start_bake(slot, previous);
                self.samples
                    .take(first_sample.0, first_sample.1, first_sample.2);
            }
            _ => {
                self.samples
                    .take(first_sample.0, first_sample.1, first_sample.2);
                for other in self.slots.others(slot) {
                    self.retire(other).await;
                }
            }
        }
        Ok(Outcome::Rolled(took))
    }

    /// The child that serves now, as the record shows it.
    fn current_view(&self) -> Option<ChildView> {
        let views = self.views();
        super::slots::current(&views).cloned()
    }

    /// Opens a bake window for the child in `new`, with `previous` kept warm.
    fn start_bake(&mut self, new: usize, previous: ChildView) {
        let baseline = previous.backend.as_ref().and_then(|b| {
            self.samples
                .baseline(previous.info.generation, b.stats.snapshot())
        });
        let canary = (self.config.canary > 0.0).then_some(self.config.canary);
        let new_info = self
            .slots
            .get(new)
            .expect("just published")
            .view
            .info
            .clone();
        match canary {
            // The previous child keeps the rest of the clients.
            Some(percent) => self.backends.set_canary(Some(Canary {
                generation: new_info.generation,
                percent: percent.round() as u8,
            })),
            None => {
                self.backends.remove(previous.info.generation);
                self.slots.set_state(previous.info.slot, State::Warm, None);
            }
        }
        self.bake = Some(Bake {
            new,
            previous: previous.info.slot,
            until: tokio::time::Instant::now() + self.config.bake,
            baseline,
        });
        self.emit(Event::BakeStarted {
            new: new_info,
            previous: previous.info,
            window: self.config.bake,
            canary,
        });
    }

    /// Judges an open bake window: a breach rolls back, a window that
    /// passed promotes.
    async fn judge_bake(&mut self) {
        let Some(bake) = &self.bake else {
            return;
        };
        let Some(backend) = self
            .slots
            .get(bake.new)
            .and_then(|o| o.view.backend.clone())
        else {
            return;
        };
        let evidence = Evidence {
            new: backend.stats.snapshot(),
            previous: bake.baseline,
        };
        let rule = if backend.is_unhealthy() {
            Some(Rule::Unhealthy)
        } else {
            self.rules().judge(&evidence)
        };
        match rule {
            Some(rule) => self.roll_back(rule, evidence).await,
            None if tokio::time::Instant::now() >= bake.until => {
                self.promote(Promotion::Passed).await
            }
            None => {}
        }
    }

    /// Ends the bake window keeping the new child: the previous one is retired.
    async fn promote(&mut self, why: Promotion) {
        let Some(bake) = self.bake.take() else {
            return;
        };
        self.backends.set_canary(None);
        let info = |slot: usize| self.slots.get(slot).map(|o| o.view.info.clone());
        if let (Some(new), Some(previous)) = (info(bake.new), info(bake.previous)) {
            self.emit(Event::Promoted { new, previous, why });
        }
        self.retire(bake.previous).await;
    }

    /// Ends the bake window going back: the previous child serves again at
    /// once (it never stopped running), the new one is drained and stopped,
    /// and its ID is quarantined.
    async fn roll_back(&mut self, rule: Rule, evidence: Evidence) {
        let Some(bake) = self.bake.take() else {
            return;
        };
        let (Some(new), Some(previous)) = (self.slots.get(bake.new), self.slots.get(bake.previous))
        else {
            return;
        };
        let (new, previous) = (new.view.clone(), previous.view.clone());
        if let Some(backend) = previous.backend.clone() {
            self.backends.publish(backend);
        }
        self.slots.set_state(bake.previous, State::Serving, None);
        self.backends.set_canary(None);
        if new.info.id != previous.info.id {
            self.quarantined = Some(new.info.id.clone());
            self.previous_id = None;
        }
        self.persist();
        self.emit(Event::RolledBack {
            rule,
            new: new.info,
            previous: previous.info,
            evidence: Box::new(evidence),
        });
        self.retire(bake.new).await;
    }

    /// An operator's command; the answer says what was done.
    pub async fn command(&mut self, command: Command) -> Answer {
        let answer = match command {
            Command::Pause => {
                self.paused = true;
                Ok("automatic updates paused; a crashed child is still replaced".into())
            }
            Command::Resume => {
                self.paused = false;
                Ok("automatic updates resumed".into())
            }
            Command::Rollover if *self.stop.borrow() != Stop::Running => {
                Err("liveroll is stopping".into())
            }
            Command::Rollover => {
                self.triggers.request(Reason::Admin);
                // Commands run between updates: the next update to start
                // carries this request. Its number lets a caller wait for
                // exactly that one (`liveroll ctl rollover --wait`).
                let number = self.reporter.updates_started() + 1;
                Ok(format!("rollover requested: update {number}"))
            }
            Command::Promote => match self.bake.is_some() {
                true => {
                    self.promote(Promotion::Operator).await;
                    Ok(self.serving_text("promoted"))
                }
                false => Err("no bake window is open".into()),
            },
            Command::Rollback => self.operator_rollback().await,
            Command::Upgrade => self.upgrade().await,
        };
        self.emit(Event::Control {
            command,
            answer: answer.clone(),
        });
        answer
    }

    /// Hands over to a new liveroll process (`upgrade.rs`); on success this
    /// process stops accepting and drains, leaving the children running.
    async fn upgrade(&mut self) -> Answer {
        if *self.stop.borrow() != Stop::Running {
            return Err("liveroll is stopping".into());
        }
        if self.bake.is_some() {
            // Two generations with a verdict pending: a new process would
            // have to take over the judgement too. Settle it first.
            return Err("a bake window is open: promote or roll back first, then upgrade".into());
        }
        // The record the new process adopts from is the one on disk.
        self.persist();
        let started = Instant::now();
        let patience = upgrade::patience(self.config.health_timeout);
        match self.handover.run(self.state.lock_fd(), patience).await {
            Ok(new_pid) => {
                self.emit(Event::HandedOver {
                    new_pid,
                    took: started.elapsed(),
                });
                Ok(format!(
                    "upgraded: liveroll pid {new_pid} serves and owns the children; pid {} drains and exits",
                    std::process::id()
                ))
            }
            Err(error) => {
                self.emit(Event::UpgradeFailed {
                    error: error.clone(),
                });
                Err(format!(
                    "upgrade failed, this liveroll keeps serving: {error}"
                ))
            }
        }
    }

    /// Takes over the child `left` (recorded by an earlier liveroll
    /// process) if it is alive, holds its port and is healthy: it serves
    /// from now on as if this process had started it.
    async fn take_over(&mut self, left: &SavedChild, upgrade: bool) -> Result<(), Refusal> {
        let candidate = Candidate {
            pid: left.pid,
            start_ticks: left.start_ticks,
            marker: left.marker.clone(),
            port: left.port,
        };
        let probe_timeout = self.config.health_timeout.min(Duration::from_secs(5));
        adopt::check(&candidate, &self.config.healthcheck, probe_timeout).await?;
        let generation = left.generation;
        let (backends, exits) = (self.backends.clone(), self.exits.clone());
        let process = Child::adopt(&candidate, move || {
            backends.remove(generation);
            let _ = exits.send(generation);
        });
        let info = ChildInfo {
            slot: left.slot,
            port: left.port,
            pid: left.pid,
            id: left.id.clone(),
            generation,
        };
        self.next_generation = self.next_generation.max(generation + 1);
        self.last_ids[left.slot] = left.id.clone();
        let tree = process.tree.clone();
        self.slots.start(left.slot, process, info.clone(), tree);
        let backend = Backend::new(
            SocketAddr::from((Ipv4Addr::LOCALHOST, left.port)),
            generation,
        );
        self.backends.publish(backend.clone());
        self.samples.take(
            generation,
            tokio::time::Instant::now(),
            backend.stats.snapshot(),
        );
        self.slots
            .set_state(left.slot, State::Serving, Some(backend));
        self.emit(Event::Adopted {
            child: info,
            upgrade,
        });
        Ok(())
    }

    /// On an upgrade, before this process accepts anything: adopts every
    /// child the old process recorded as serving. Any that cannot be is an
    /// error, and the old process keeps serving (nothing was touched).
    /// Returns how many were adopted.
    pub async fn adopt_for_upgrade(&mut self) -> Result<usize, String> {
        let saved = self.state.load().unwrap_or_default();
        self.quarantined = saved.quarantined;
        if let Some(left) = saved.children.iter().find(|c| !c.serving) {
            return Err(format!(
                "the child on port {} is not serving (in the middle of an update?); try again",
                left.port
            ));
        }
        let mut adopted = 0;
        for left in &saved.children {
            if left.slot > 1 || left.port != self.slots.port(left.slot) {
                return Err(format!(
                    "the state file's child on port {} does not fit the child ports",
                    left.port
                ));
            }
            self.take_over(left, true).await.map_err(|why| {
                format!(
                    "cannot adopt the child on port {} (pid {}): {why}",
                    left.port, left.pid
                )
            })?;
            adopted += 1;
        }
        Ok(adopted)
    }

    /// Back to the child kept warm if a bake window is open, else a new
    /// child of the previous ID through `<<ID>>`.
    async fn operator_rollback(&mut self) -> Answer {
        if self.bake.is_some() {
            let evidence = self.bake_evidence();
            self.roll_back(Rule::Operator, evidence).await;
            return Ok(self.serving_text("rolled back"));
        }
        let Some(previous) = self.previous_id.clone() else {
            return Err("no earlier ID is known to roll back to".into());
        };
        if !self.config.exec.contains("<<ID>>") {
            return Err(format!(
                "the bake window is over and --exec has no <<ID>>, so {previous} cannot be started"
            ));
        }
        let current = self.slots.current().map(|c| c.id.clone());
        let trigger = Trigger {
            reason: Reason::Admin,
            forced: true,
            reload: false,
        };
        self.run_to(trigger, Some(previous.clone())).await;
        if self.slots.current().map(|c| c.id.as_str()) != Some(previous.as_str()) {
            return Err(format!("starting {previous} failed; see the log"));
        }
        if let Some(current) = current.filter(|c| *c != previous) {
            self.quarantined = Some(current);
            self.persist();
        }
        Ok(self.serving_text("rolled back"))
    }

    fn bake_evidence(&self) -> Evidence {
        let bake = self.bake.as_ref().expect("a bake window is open");
        let new = self
            .slots
            .get(bake.new)
            .and_then(|o| o.view.backend.as_ref())
            .map(|b| b.stats.snapshot())
            .unwrap_or_default();
        Evidence {
            new,
            previous: bake.baseline,
        }
    }

    fn serving_text(&self, done: &str) -> String {
        match self.slots.current() {
            Some(c) => format!("{done}: serving id={} port={} pid={}", c.id, c.port, c.pid),
            None => format!("{done}: no child serving"),
        }
    }

    /// An empty slot whose port is free. A port still held (a container
    /// that outlived its `docker run`) gets `--stop` once and is looked at
    /// again.
    async fn free_slot(&mut self) -> Result<usize, UpdateError> {
        match self.slots.free(port_is_free) {
            Ok(slot) => return Ok(slot),
            Err(held) if held.is_empty() || self.config.stop.is_none() => {
                return Err(UpdateError::NoSlot(held))
            }
            Err(held) => {
                for port in held {
                    let slot = self.slot_of(port);
                    let id = self.last_ids[slot].clone();
                    self.run_stop(slot, &id, StopReason::PortHeld).await;
                }
            }
        }
        // The holder may take a moment to let go after it was stopped.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.slots.free(port_is_free) {
                Ok(slot) => return Ok(slot),
                Err(held) if Instant::now() >= deadline => return Err(UpdateError::NoSlot(held)),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn slot_of(&self, port: u16) -> usize {
        usize::from(self.slots.port(1) == port)
    }

    /// Starts `--exec` for `slot` and records the child there as starting.
    fn spawn(&mut self, slot: usize, id: &str) -> Result<ChildInfo, UpdateError> {
        let c = &self.config;
        let templates = [Some(&c.exec), c.stop.as_ref()];
        if templates.iter().flatten().any(|t| t.contains("<<ID>>")) {
            if let Some(bad) = command::unsafe_in_shell(id) {
                return Err(UpdateError::UnsafeId(bad));
            }
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let port = self.slots.port(slot);
        let cmd = command::expand(&c.exec, port, &c.healthcheck, id);
        let (backends, exits) = (self.backends.clone(), self.exits.clone());
        let marker = format!("{}.{generation}", self.token);
        let process = Child::spawn(&cmd, &marker, move |_status| {
            // Out of the proxy at once; the engine decides the rest.
            backends.remove(generation);
            let _ = exits.send(generation);
        })
        .map_err(UpdateError::Spawn)?;
        let info = ChildInfo {
            slot,
            port,
            pid: process.pid,
            id: id.to_string(),
            generation,
        };
        self.last_ids[slot] = id.to_string();
        let tree = process.tree.clone();
        self.slots.start(slot, process, info.clone(), tree);
        self.persist();
        self.emit(Event::Spawned {
            child: info.clone(),
            cmd,
        });
        Ok(info)
    }

    /// Whoever listens on the child's port must be the child: a process
    /// outside its tree (a squatter, another liveroll's child) would have
    /// answered the health check in its place. Docker's `docker-proxy`
    /// holds a published port on the container's behalf; it passes if it
    /// started after the child did (an older one belongs to an older
    /// container). With nobody listening, traffic reaches the port by NAT
    /// (Docker without its userland proxy), which no squatter can do.
    fn verify_listener(&self, child: &ChildInfo) -> Result<(), UpdateError> {
        let process = &self.slots.get(child.slot).expect("just started").process;
        let holders = match listener::on_port(child.port) {
            Listening::Nobody => return Ok(()),
            Listening::By(holders) => holders,
        };
        let foreign = holders.iter().find(|h| {
            let proxy_for_it = h.name == "docker-proxy" && h.start_ticks >= process.start_ticks;
            !proxy_for_it && !process.tree.contains(h.pid)
        });
        match (foreign, holders.is_empty()) {
            (None, false) => Ok(()),
            (holder, _) => Err(UpdateError::NotOurs {
                port: child.port,
                pid: child.pid,
                holder: holder.map(|h| (h.pid, h.name.clone())),
            }),
        }
    }

    /// Takes a child out of the proxy, lets its requests finish (bounded by
    /// `--drain-timeout`), then stops it.
    async fn retire(&mut self, slot: usize) {
        let Some(occupant) = self.slots.get(slot) else {
            return;
        };
        let child = occupant.view.info.clone();
        if occupant.process.has_exited() {
            // It died while the update that replaces it was running.
            self.emit(Event::Exited {
                child: child.clone(),
                status: occupant.process.exit_status(),
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
        self.terminate(slot, StopReason::Retire).await;
    }

    /// Runs `--stop` for a slot's child, stops its process tree and empties
    /// the slot.
    async fn terminate(&mut self, slot: usize, reason: StopReason) {
        let Some(occupant) = self.slots.get(slot) else {
            return;
        };
        let id = occupant.view.info.id.clone();
        self.run_stop(slot, &id, reason).await;
        let occupant = self.slots.get(slot).expect("still there");
        let termination = occupant.process.terminate(self.config.kill_timeout).await;
        self.finish(slot, termination);
    }

    /// Reports how a slot's child ended and empties the slot.
    fn finish(&mut self, slot: usize, termination: Termination) {
        let Some(occupant) = self.slots.clear(slot) else {
            return;
        };
        self.persist();
        let child = occupant.view.info;
        if termination.ending == Ending::Killed {
            self.emit(Event::Killed {
                child: child.clone(),
                after: self.config.kill_timeout,
            });
        }
        self.emit(Event::Terminated {
            child,
            status: termination.status,
        });
    }

    /// Runs `--stop`, if given, for the child in `slot` (with `id` for `<<ID>>`).
    async fn run_stop(&self, slot: usize, id: &str, reason: StopReason) {
        let Some(template) = &self.config.stop else {
            return;
        };
        let port = self.slots.port(slot);
        let cmd = command::expand(template, port, &self.config.healthcheck, id);
        let result = command::run(&cmd, self.config.stop_timeout(), 0).await;
        self.emit(Event::StopRan {
            port,
            reason,
            result: result.map(|_| ()),
        });
    }

    /// A child's shell exited. If it was serving, it crashed: stop what is
    /// left of it and have it replaced.
    pub async fn child_exited(&mut self, generation: u64) {
        // Retired or failed on purpose, or still starting (its health check
        // sees the exit): nothing to do here.
        let Some(slot) = self.slots.find(generation) else {
            return;
        };
        if let Some(bake) = &self.bake {
            if slot == bake.new {
                // The new version crashed while baking: back to the warm one.
                let evidence = self.bake_evidence();
                self.roll_back(Rule::Crashed, evidence).await;
                return;
            }
            if slot == bake.previous {
                // Nothing left to roll back to: the new child is kept.
                self.promote(Promotion::PreviousExited).await;
                return;
            }
        }
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
        self.terminate(slot, StopReason::Failed).await;
        self.crashed(ran);
    }

    /// A child died after running for `ran`: its replacement is requested at
    /// once and runs when the back-off allows.
    fn crashed(&mut self, ran: Duration) {
        let delay = self.backoff.crashed(ran);
        self.emit(Event::ReplaceScheduled { delay });
        self.triggers.request(Reason::ChildExited);
    }

    /// Before the first update: stops whatever an earlier liveroll on these
    /// ports left behind (it crashed, or was killed), as its state file
    /// records it, then runs `--stop` for both slots.
    pub async fn recover(&mut self) {
        let saved = self.state.load().unwrap_or_default();
        self.quarantined = saved.quarantined;
        for left in saved.children {
            // A child that served and still does (the earlier process was
            // killed, the child was not) is kept as it is: no cold start.
            let fits = left.slot < 2 && left.port == self.slots.port(left.slot);
            if left.serving && fits && self.take_over(&left, false).await.is_ok() {
                continue;
            }
            let child = ChildInfo {
                slot: left.slot,
                port: left.port,
                pid: left.pid,
                id: left.id.clone(),
                generation: left.generation,
            };
            // Its leader counts only if it is the very process recorded: a
            // pid reused since is someone else's.
            let same = procfs::stat(left.pid)
                .is_some_and(|s| s.start_ticks == left.start_ticks && !s.exited());
            let tree = match same {
                true => Tree {
                    leader: left.pid,
                    marker: left.marker.clone(),
                },
                false => Tree::marked(&left.marker),
            };
            let running = !tree.members().is_empty();
            if let Some(slot) = self.last_ids.get_mut(left.slot) {
                *slot = left.id.clone();
            }
            if !running && left.stop.is_none() {
                continue;
            }
            self.emit(Event::Leftover {
                child: child.clone(),
                running,
            });
            if let Some(stop) = &left.stop {
                let result = command::run(stop, self.config.stop_timeout(), 0).await;
                self.emit(Event::StopRan {
                    port: left.port,
                    reason: StopReason::Startup,
                    result: result.map(|_| ()),
                });
            }
            let ending = tree.terminate(self.config.kill_timeout).await;
            if ending == Ending::Killed {
                self.emit(Event::Killed {
                    child: child.clone(),
                    after: self.config.kill_timeout,
                });
            }
            self.emit(Event::Terminated {
                child,
                status: None,
            });
        }
        // `--stop` for the slots with nothing in them: an adopted child is
        // not stopped behind its back.
        for slot in (0..2).filter(|&s| self.slots.get(s).is_none()) {
            let id = self.last_ids[slot].clone();
            self.run_stop(slot, &id, StopReason::Startup).await;
        }
        self.persist();
    }

    /// Whether a child serves now (after [`recover`](Self::recover), one
    /// that was adopted).
    pub fn serving(&self) -> bool {
        self.slots.current().is_some()
    }

    /// Writes the record of children to the state file.
    fn persist(&self) {
        let children =
            (0..2)
                .filter_map(|slot| self.slots.get(slot))
                .map(|o| {
                    let info = &o.view.info;
                    SavedChild {
                        slot: info.slot,
                        port: info.port,
                        pid: info.pid,
                        start_ticks: o.process.start_ticks,
                        id: info.id.clone(),
                        generation: info.generation,
                        marker: o.process.tree.marker.clone(),
                        stop: self.config.stop.as_ref().map(|t| {
                            command::expand(t, info.port, &self.config.healthcheck, &info.id)
                        }),
                        serving: o.view.state == State::Serving,
                    }
                })
                .collect();
        let saved = Saved {
            owner_pid: std::process::id() as i32,
            children,
            quarantined: self.quarantined.clone(),
        };
        if let Err(e) = self.state.save(&saved) {
            self.emit(Event::StateFailed {
                error: e.to_string(),
            });
        }
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
        // Both at once: each may wait out its own stop and kill timeouts.
        let this = &*self;
        let [first, second] = [0, 1].map(|slot| {
            let id = this.slots.get(slot).map(|o| o.view.info.id.clone());
            async move {
                if let Some(id) = id {
                    this.run_stop(slot, &id, StopReason::Shutdown).await;
                }
            }
        });
        tokio::join!(first, second);
        let kill_timeout = self.config.kill_timeout;
        let [first, second] = [0, 1].map(|slot| {
            self.slots
                .get(slot)
                .map(|o| o.process.terminate(kill_timeout))
        });
        let (first, second) = tokio::join!(maybe(first), maybe(second));
        for (slot, termination) in [(0, first), (1, second)] {
            if let Some(termination) = termination {
                self.finish(slot, termination);
            }
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

/// A random token (hex), from the kernel's random source.
fn new_token() -> String {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        // Unique enough on one host: this pid at this moment.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    #[test]
    fn tokens_differ() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
    }
}
