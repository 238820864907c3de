//! The supervisor: a Pingora background service that waits for triggers and
//! runs updates one at a time, and on shutdown drains and stops every child.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use log::{error, info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::backends::BackendSet;
use crate::child;
use crate::config::Config;
use crate::rollout::Rollout;
use crate::signals;
use crate::trigger::{Reason, Triggers};

pub struct Supervisor {
    config: Arc<Config>,
    backends: Arc<BackendSet>,
    triggers: Arc<Triggers>,
    /// Set by a stop signal; Pingora's shutdown follows from it.
    stop: Arc<watch::Sender<bool>>,
    /// Told once every child is gone, so `main` can exit without waiting out
    /// Pingora's fixed grace period.
    finished: Sender<()>,
}

impl Supervisor {
    pub fn new(
        config: Arc<Config>,
        backends: Arc<BackendSet>,
        stop: watch::Sender<bool>,
        finished: Sender<()>,
    ) -> Self {
        Supervisor {
            config,
            backends,
            triggers: Arc::new(Triggers::new()),
            stop: Arc::new(stop),
            finished,
        }
    }

    /// Stops serving: waits (bounded) for requests in flight, then terminates
    /// every child's process group.
    async fn shut_down(&self) {
        let started = Instant::now();
        let deadline = started + self.config.drain_timeout;
        for backend in self.backends.all() {
            let left = deadline.saturating_duration_since(Instant::now());
            if !backend.drained(left).await {
                warn!(
                    "event=drain_timeout port={} inflight={}",
                    backend.addr.port(),
                    backend.inflight()
                );
            }
        }
        child::terminate_all(self.config.kill_timeout).await;
        info!("event=stopped took_ms={}", started.elapsed().as_millis());
    }
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if let Err(e) = signals::listen(self.triggers.clone(), self.stop.clone()) {
            error!("event=fatal error=\"cannot install signal handlers: {e}\"");
            std::process::exit(1);
        }

        let triggers = self.triggers.clone();
        let period = self.config.interval;
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                triggers.request(Reason::Interval);
            }
        });

        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let mut rollout = Rollout::new(
            self.config.clone(),
            self.backends.clone(),
            self.triggers.clone(),
            exits_tx,
        );
        self.triggers.request(Reason::Startup);
        loop {
            // Exits are looked at first: a crashed child's slot is cleared
            // before the update it triggers runs.
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(generation) = exits.recv() => {
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = rollout.child_exited(generation) => {}
                    }
                }
                trigger = self.triggers.next() => {
                    // An update in progress is abandoned at shutdown; every
                    // child it started is still stopped below.
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = rollout.run(trigger) => {}
                    }
                }
            }
        }
        self.shut_down().await;
        let _ = self.finished.send(());
    }
}
