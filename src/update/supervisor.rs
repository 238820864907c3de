//! The supervisor: a Pingora background service that waits for triggers and
//! runs updates one at a time, and on shutdown drains and stops every child.

use std::future::Future;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use log::{error, info, warn};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use crate::serve::backends::BackendSet;
use crate::config::Config;
use crate::update::flow::Rollout;
use crate::report::status::Status;
use crate::update::trigger::{Reason, Trigger, Triggers};
use crate::process::child;
use crate::report::{admin, notify};
use crate::signals;
use crate::update::monitor;

pub struct Supervisor {
    config: Arc<Config>,
    backends: Arc<BackendSet>,
    status: Arc<Status>,
    triggers: Arc<Triggers>,
    /// Bound in `main` so a taken port fails before anything starts.
    admin: std::sync::Mutex<Option<std::net::TcpListener>>,
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
        admin: Option<std::net::TcpListener>,
        stop: watch::Sender<bool>,
        finished: Sender<()>,
    ) -> Self {
        Supervisor {
            status: Arc::new(Status::new(&config)),
            config,
            backends,
            triggers: Arc::new(Triggers::new()),
            admin: std::sync::Mutex::new(admin),
            stop: Arc::new(stop),
            finished,
        }
    }

    /// Stops serving: waits (bounded) for requests in flight, then terminates
    /// every child's process group.
    async fn shut_down(&self) {
        self.status.stopping();
        // Requests waiting for a child get their 503 now; wait until each
        // has been written before anything can end the process.
        self.backends.close();
        let started = Instant::now();
        let deadline = started + self.config.drain_timeout;
        // Until no backend has a request in flight, all at the same moment:
        // a request admitted late, or a retry, may lease one already seen idle.
        loop {
            let busy: Vec<_> = self
                .backends
                .in_use()
                .into_iter()
                .filter(|b| b.inflight() > 0)
                .collect();
            if busy.is_empty() && self.backends.waiting() == 0 {
                break;
            }
            if Instant::now() >= deadline {
                for backend in busy {
                    warn!(
                        "event=drain_timeout port={} inflight={}",
                        backend.addr.port(),
                        backend.inflight()
                    );
                }
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        child::terminate_all(self.config.kill_timeout).await;
        info!("event=stopped took_ms={}", started.elapsed().as_millis());
    }

    /// Starts the tasks that run beside the update loop.
    fn spawn_helpers(&self) {
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
        tokio::spawn(monitor::run(
            self.config.clone(),
            self.backends.clone(),
            self.triggers.clone(),
        ));
        if let Some(listener) = self.admin.lock().unwrap().take() {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::spawn(admin::serve(
                        listener,
                        self.status.clone(),
                        self.backends.clone(),
                    ));
                }
                Err(e) => error!("event=admin_failed error=\"{e}\""),
            }
        }
    }
}

/// Runs `work` to its end and returns its output, or `None` if shutdown
/// starts first. Meanwhile it feeds systemd's watchdog: from here, the
/// supervisor's own task, so a wedged supervisor stops feeding it.
async fn until_shutdown<T>(
    work: impl Future<Output = T>,
    shutdown: &mut ShutdownWatch,
    watchdog: &mut Option<tokio::time::Interval>,
) -> Option<T> {
    tokio::pin!(work);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return None,
            output = &mut work => return Some(output),
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => notify::watchdog(),
        }
    }
}

/// What the supervisor does next.
enum Work {
    Exited(u64),
    Update(Trigger),
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Handlers first: a signal must never kill liveroll with children left.
        let signals = signals::listen(
            self.triggers.clone(),
            self.status.clone(),
            self.config.shutdown_delay,
            self.stop.clone(),
        );
        if let Err(e) = signals {
            error!("event=fatal error=\"cannot install signal handlers: {e}\"");
            std::process::exit(1);
        }
        self.spawn_helpers();

        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let mut rollout = Rollout::new(
            self.config.clone(),
            self.backends.clone(),
            self.triggers.clone(),
            self.status.clone(),
            exits_tx,
        );
        self.triggers.request(Reason::Startup);
        let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
        loop {
            // Exits are looked at first: a crashed child's slot is cleared
            // before the update it triggers runs.
            let next = async {
                tokio::select! {
                    biased;
                    Some(generation) = exits.recv() => Work::Exited(generation),
                    trigger = self.triggers.next() => Work::Update(trigger),
                }
            };
            let Some(work) = until_shutdown(next, &mut shutdown, &mut watchdog).await else {
                break;
            };
            // An update in progress is abandoned at shutdown; every child it
            // started, and every request still in flight, is seen to below.
            let done = match work {
                Work::Exited(generation) => {
                    until_shutdown(
                        rollout.child_exited(generation),
                        &mut shutdown,
                        &mut watchdog,
                    )
                    .await
                }
                Work::Update(trigger) => {
                    until_shutdown(rollout.run(trigger), &mut shutdown, &mut watchdog).await
                }
            };
            if done.is_none() {
                break;
            }
        }
        self.shut_down().await;
        let _ = self.finished.send(());
    }
}
