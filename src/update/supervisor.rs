//! The supervisor: a Pingora background service that waits for triggers and
//! runs updates one at a time, and on shutdown drains and stops every child.

use std::future::Future;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_core::services::ServiceReadyNotifier;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::control::{Control, Request};
use super::flow::{Engine, Parts};
use super::monitor;
use super::slots::{ChildView, Slots};
use super::state::StateFile;
use super::trigger::{Reason, Triggers};
use super::upgrade::{self, Handover};
use crate::config::Config;
use crate::handover::successor::Successor;
use crate::process::child::Child;
use crate::process::reaper;
use crate::report::admin::{self, Listeners, Scope};
use crate::report::event::Event;
use crate::report::notify;
use crate::report::reporter::Reporter;
use crate::serve::backends::BackendSet;
use crate::serve::connections::Connections;
use crate::signals::{self, Stop, StopSender};

pub struct Supervisor {
    config: Arc<Config>,
    backends: Arc<BackendSet>,
    reporter: Arc<Reporter>,
    triggers: Arc<Triggers>,
    /// Operator commands: the admin listener sends, the loop receives.
    control: Control,
    commands: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
    /// The engine's record of children and its state file, until `start`
    /// hands them over.
    slots: std::sync::Mutex<Option<(Slots<Child>, StateFile)>>,
    children: watch::Receiver<Arc<[ChildView]>>,
    /// Bound in `main` so a taken port fails before anything starts.
    listeners: std::sync::Mutex<Listeners>,
    /// Set by a stop signal; Pingora's shutdown follows from it.
    stop: Arc<StopSender>,
    /// Told once every child is gone, so `main` can exit without waiting out
    /// Pingora's fixed grace period.
    finished: Sender<()>,
    /// What this process needs to hand over to a new one later.
    handover: Arc<Handover>,
    /// Set when this process is the new side of an upgrade.
    successor: std::sync::Mutex<Option<Successor>>,
    /// The proxy's client connections, drained after a handover.
    connections: Arc<Connections>,
}

/// How this process takes its children at startup.
enum Start {
    /// Recover what an earlier process left, then an update starts one.
    Fresh,
    /// An upgrade: adopt the old process's children, then tell it.
    Upgrade(Successor),
}

/// What the supervisor is given besides the configuration.
pub struct Wiring {
    pub backends: Arc<BackendSet>,
    pub state: StateFile,
    pub listeners: Listeners,
    pub stop: Arc<StopSender>,
    pub finished: Sender<()>,
    pub handover: Handover,
    pub successor: Option<Successor>,
    pub connections: Arc<Connections>,
}

impl Supervisor {
    pub fn new(config: Arc<Config>, wiring: Wiring) -> Self {
        let Wiring {
            backends,
            state,
            listeners,
            stop,
            finished,
            handover,
            successor,
            connections,
        } = wiring;
        let slots = Slots::new(config.child_ports());
        let children = slots.watch();
        let (control, commands) = Control::channel();
        Supervisor {
            control,
            commands: std::sync::Mutex::new(Some(commands)),
            reporter: Arc::new(Reporter::new(&config, children.clone())),
            config,
            backends,
            triggers: Arc::new(Triggers::new()),
            slots: std::sync::Mutex::new(Some((slots, state))),
            children,
            listeners: std::sync::Mutex::new(listeners),
            stop,
            finished,
            handover: Arc::new(handover),
            successor: std::sync::Mutex::new(successor),
            connections,
        }
    }

    /// Where operator commands go.
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    /// The engine's record of children, for a last look at exit.
    pub fn children(&self) -> watch::Receiver<Arc<[ChildView]>> {
        self.children.clone()
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
            self.reporter.clone(),
        ));
        let listeners = std::mem::take(&mut *self.listeners.lock().unwrap());
        for (scope, listener) in [
            (Scope::Admin, listeners.admin),
            (Scope::Ready, listeners.ready),
        ] {
            let Some(listener) = listener else { continue };
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    let handler = admin::Handler {
                        scope,
                        reporter: self.reporter.clone(),
                        backends: self.backends.clone(),
                        control: self.control.clone(),
                        token: self.config.admin_token.clone(),
                    };
                    let stop = self.stop.subscribe();
                    let answers = self.connections.clone();
                    tokio::spawn(admin::serve(listener, Arc::new(handler), stop, answers));
                }
                Err(e) => self.reporter.emit(Event::AdminFailed {
                    error: e.to_string(),
                }),
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
    Command(Request),
    Tick,
    Update(super::trigger::Trigger),
}

impl Supervisor {
    fn fatal(&self, error: String) -> ! {
        self.reporter.emit(Event::Fatal { error });
        std::process::exit(1);
    }

    /// Runs updates and handles exits, one at a time, until shutdown.
    async fn serve(
        &self,
        engine: &mut Engine,
        exits: &mut mpsc::UnboundedReceiver<u64>,
        commands: &mut mpsc::UnboundedReceiver<Request>,
        shutdown: &mut ShutdownWatch,
    ) {
        let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
        loop {
            // Exits are looked at first: a crashed child's slot is cleared
            // before the update it triggers runs. Automatic updates wait out
            // the back-off; a reload does not.
            let hold_until = engine.backoff_until();
            let tick = engine.next_tick();
            let next = async {
                tokio::select! {
                    biased;
                    Some(generation) = exits.recv() => Work::Exited(generation),
                    Some(request) = commands.recv() => Work::Command(request),
                    _ = tokio::time::sleep_until(tick) => Work::Tick,
                    trigger = self.triggers.next(hold_until) => Work::Update(trigger),
                }
            };
            let Some(work) = until_shutdown(next, shutdown, &mut watchdog).await else {
                return;
            };
            // An update in progress is abandoned at shutdown; every child it
            // started, and every request still in flight, is seen to after.
            let done = match work {
                Work::Exited(generation) => {
                    until_shutdown(engine.child_exited(generation), shutdown, &mut watchdog).await
                }
                Work::Command(request) => {
                    let answer =
                        until_shutdown(engine.command(request.command), shutdown, &mut watchdog)
                            .await;
                    answer.map(|answer| {
                        let _ = request.reply.send(answer);
                    })
                }
                Work::Tick => until_shutdown(engine.tick(), shutdown, &mut watchdog).await,
                Work::Update(trigger) => {
                    until_shutdown(engine.run(trigger), shutdown, &mut watchdog).await
                }
            };
            if done.is_none() {
                return;
            }
        }
    }

    /// After a handover: the new process accepts and owns the children.
    /// This one lets its own clients finish (bounded by `--drain-timeout`)
    /// and stops nothing.
    async fn drain_handed_over(&self) {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout;
        // Only once the accept loop is over is every client counted.
        self.connections.accepting_stopped(deadline).await;
        self.connections.all_closed(deadline).await;
        self.reporter.emit(Event::HandoverDrained {
            open: self.connections.open(),
            took: started.elapsed(),
        });
    }

    /// Requests waiting for a child get their 503 now, requests in flight
    /// finish (bounded by `--drain-timeout`), then every child is stopped.
    async fn shut_down(&self, engine: &mut Engine) {
        self.reporter.emit(Event::Stopping);
        self.backends.close();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.config.drain_timeout;
        engine.stop_all(deadline).await;
        self.reporter.emit(Event::Stopped {
            took: started.elapsed(),
        });
    }
}

#[async_trait]
impl BackgroundService for Supervisor {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        // Handlers first: a signal must never kill liveroll with children left.
        let signals = signals::listen(
            self.triggers.clone(),
            self.reporter.clone(),
            self.config.shutdown_delay,
            self.stop.clone(),
            self.control.clone(),
        );
        if let Err(e) = signals {
            self.fatal(format!("cannot install signal handlers: {e}"));
        }
        if let Err(e) = reaper::start() {
            self.fatal(format!(
                "cannot become the reaper of children's orphans: {e}"
            ));
        }
        let start = match self.successor.lock().unwrap().take() {
            Some(successor) => Start::Upgrade(successor),
            None => Start::Fresh,
        };

        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let (slots, state) = self.slots.lock().unwrap().take().expect("started once");
        let parts = Parts {
            config: self.config.clone(),
            backends: self.backends.clone(),
            triggers: self.triggers.clone(),
            reporter: self.reporter.clone(),
            stop: self.stop.subscribe(),
            state,
            handover: self.handover.clone(),
        };
        let mut engine = Engine::new(parts, slots, exits_tx);
        let mut commands = self.commands.lock().unwrap().take().expect("started once");
        let recovered = match start {
            Start::Fresh => {
                // The proxy listens at once: requests wait for the first child.
                ready.notify_ready();
                self.spawn_helpers();
                let recovered = until_shutdown(engine.recover(), &mut shutdown, &mut None).await;
                // An adopted child serves already; the interval looks for
                // new versions as usual.
                if recovered.is_some() && !engine.serving() {
                    self.triggers.request(Reason::Startup);
                }
                recovered
            }
            Start::Upgrade(successor) => {
                self.take_over(&mut engine, successor, ready).await;
                Some(())
            }
        };
        if recovered.is_some() {
            self.serve(&mut engine, &mut exits, &mut commands, &mut shutdown)
                .await;
        }
        // Commands sent from now on are answered "liveroll is shutting down".
        drop(commands);
        if *self.stop.borrow() == Stop::HandedOver {
            self.drain_handed_over().await;
        } else {
            self.shut_down(&mut engine).await;
        }
        let _ = self.finished.send(());
    }
}

impl Supervisor {
    /// The new side of an upgrade: adopt the old process's children, start
    /// accepting (the proxy service waits for `ready`), tell the old process
    /// and wait for its answer, then tell systemd this process is ready.
    /// Failing before that, it exits at once without touching a child: the
    /// old process still serves and owns them.
    async fn take_over(
        &self,
        engine: &mut Engine,
        successor: Successor,
        ready: ServiceReadyNotifier,
    ) {
        if let Err(error) = engine.adopt_for_upgrade().await {
            successor.refuse(&error);
            self.fatal(error);
        }
        ready.notify_ready();
        let from_pid = successor.inherited.old_pid;
        let patience = upgrade::patience(self.config.health_timeout);
        let answer = tokio::task::spawn_blocking(move || successor.ready(patience)).await;
        if let Ok(Err(error)) = answer {
            // It said nothing, or something else: it is most likely gone,
            // and this process is all that serves.
            log::warn!("event=upgrade_handshake error={error:?}");
        }
        self.reporter.emit(Event::Upgraded { from_pid });
        self.spawn_helpers();
        // The old process had nothing serving (its child had crashed, say):
        // start one as a fresh start would.
        if !engine.serving() {
            self.triggers.request(Reason::Startup);
        }
    }
}
