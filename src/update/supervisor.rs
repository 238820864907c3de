//! The supervisor: a Pingora background service that waits for triggers and
//! runs updates one at a time, and on shutdown drains and stops every child.

use std::future::Future;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;

use super::control::{Answer, Command, Control, Request};
use super::flow::{Engine, Parts};
use super::monitor;
use super::slots::{ChildView, Slots};
use super::state::StateFile;
use super::trigger::{Reason, Triggers};
use crate::config::Config;
use crate::process::child::Child;
use crate::process::reaper;
use crate::report::admin::{self, Listeners, Scope};
use crate::report::event::Event;
use crate::report::notify;
use crate::report::reporter::Reporter;
use crate::serve::backends::BackendSet;
use crate::signals::{self, Stop, StopSender};

pub struct Supervisor {
    config: Arc<Config>,
    backends: Arc<BackendSet>,
    reporter: Arc<Reporter>,
    triggers: Arc<Triggers>,
    /// The engine's record of children and its state file, until `start`
    /// hands them over.
    slots: std::sync::Mutex<Option<(Slots<Child>, StateFile)>>,
    children: watch::Receiver<Arc<[ChildView]>>,
    /// Bound in `main` so a taken port fails before anything starts.
    listeners: std::sync::Mutex<Listeners>,
    /// Operator commands: the admin listener sends, the loop answers.
    control: Control,
    requests: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
    /// Set by a stop signal; Pingora's shutdown follows from it.
    stop: Arc<StopSender>,
    /// Told once every child is gone, so `main` can exit without waiting out
    /// Pingora's fixed grace period.
    finished: Sender<()>,
}

impl Supervisor {
    pub fn new(
        config: Arc<Config>,
        backends: Arc<BackendSet>,
        state: StateFile,
        listeners: Listeners,
        stop: StopSender,
        finished: Sender<()>,
    ) -> Self {
        let slots = Slots::new(config.child_ports());
        let children = slots.watch();
        let (control, requests) = Control::channel();
        Supervisor {
            reporter: Arc::new(Reporter::new(&config, children.clone())),
            config,
            backends,
            triggers: Arc::new(Triggers::new()),
            slots: std::sync::Mutex::new(Some((slots, state))),
            children,
            listeners: std::sync::Mutex::new(listeners),
            control,
            requests: std::sync::Mutex::new(Some(requests)),
            stop: Arc::new(stop),
            finished,
        }
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
                    tokio::spawn(admin::serve(listener, Arc::new(handler)));
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
    Update(super::trigger::Trigger),
    Command(Request),
}

impl Supervisor {
    fn fatal(&self, error: String) -> ! {
        self.reporter.emit(Event::Fatal { error });
        std::process::exit(1);
    }

    /// Runs updates and handles exits and operator commands, one at a
    /// time, until shutdown.
    async fn serve(
        &self,
        engine: &mut Engine,
        exits: &mut mpsc::UnboundedReceiver<u64>,
        requests: &mut mpsc::UnboundedReceiver<Request>,
        shutdown: &mut ShutdownWatch,
    ) {
        let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
        // Interval updates are skipped while paused.
        let mut paused = false;
        // Commands that came during an update and need the engine.
        let mut deferred: Vec<Request> = Vec::new();
        loop {
            // Exits are looked at first: a crashed child's slot is cleared
            // before the update it triggers runs. Automatic updates wait out
            // the back-off; a forced one does not.
            let hold_until = engine.backoff_until();
            let next = async {
                if !deferred.is_empty() {
                    return Work::Command(deferred.remove(0));
                }
                tokio::select! {
                    biased;
                    Some(generation) = exits.recv() => Work::Exited(generation),
                    Some(request) = requests.recv() => Work::Command(request),
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
                Work::Update(trigger) if paused && trigger.reason == Reason::Interval => {
                    self.reporter.emit(Event::SkippedPaused {
                        trigger: trigger.reason,
                    });
                    Some(())
                }
                Work::Update(trigger) => {
                    // Commands that need no engine are answered meanwhile:
                    // a pause must not wait for a five-minute pull.
                    let meanwhile = async {
                        while let Some(request) = requests.recv().await {
                            match self.answer_now(request.command, &mut paused) {
                                Some(answer) => self.reply(request, answer),
                                None => deferred.push(request),
                            }
                        }
                        std::future::pending().await
                    };
                    let update = async {
                        tokio::select! {
                            biased;
                            () = engine.run(trigger) => {}
                            () = meanwhile => {}
                        }
                    };
                    until_shutdown(update, shutdown, &mut watchdog).await
                }
                Work::Command(request) => {
                    let answer = self.command(engine, request.command, &mut paused).await;
                    self.reply(request, answer);
                    Some(())
                }
            };
            if done.is_none() {
                return;
            }
        }
    }

    /// Runs an operator's command between updates.
    async fn command(&self, _engine: &mut Engine, command: Command, paused: &mut bool) -> Answer {
        if let Some(answer) = self.answer_now(command, paused) {
            return answer;
        }
        match command {
            Command::Rollback | Command::Promote => Err("not available yet".into()),
            Command::Pause | Command::Resume | Command::Rollover => unreachable!("answered now"),
        }
    }

    /// The commands that need no engine, answered even during an update;
    /// `None` for the others.
    fn answer_now(&self, command: Command, paused: &mut bool) -> Option<Answer> {
        Some(match command {
            Command::Pause if *paused => Ok("already paused".into()),
            Command::Pause => {
                *paused = true;
                Ok("paused: interval updates are skipped until resume; a crashed child is still replaced, and rollover still works".into())
            }
            Command::Resume if !*paused => Ok("not paused".into()),
            Command::Resume => {
                *paused = false;
                Ok("resumed: interval updates run again".into())
            }
            Command::Rollover if *self.stop.borrow() != Stop::Running => {
                Err("liveroll is stopping".into())
            }
            Command::Rollover => {
                self.triggers.request(Reason::Admin);
                // Commands are answered between updates or while one runs,
                // never between its start and its number: the next update
                // to start carries this request.
                let number = self.reporter.updates_started() + 1;
                Ok(format!("rollover requested: update {number}"))
            }
            Command::Rollback | Command::Promote => return None,
        })
    }

    /// Logs a command's answer and sends it back.
    fn reply(&self, request: Request, answer: Answer) {
        self.reporter.emit(Event::Command {
            command: request.command,
            answer: answer.clone(),
        });
        let _ = request.reply.send(answer);
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
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Handlers first: a signal must never kill liveroll with children left.
        let signals = signals::listen(
            self.triggers.clone(),
            self.reporter.clone(),
            self.config.shutdown_delay,
            self.stop.clone(),
        );
        if let Err(e) = signals {
            self.fatal(format!("cannot install signal handlers: {e}"));
        }
        if let Err(e) = reaper::start() {
            self.fatal(format!(
                "cannot become the reaper of children's orphans: {e}"
            ));
        }
        self.spawn_helpers();

        let (exits_tx, mut exits) = mpsc::unbounded_channel();
        let mut requests = self.requests.lock().unwrap().take().expect("started once");
        let (slots, state) = self.slots.lock().unwrap().take().expect("started once");
        let parts = Parts {
            config: self.config.clone(),
            backends: self.backends.clone(),
            triggers: self.triggers.clone(),
            reporter: self.reporter.clone(),
            stop: self.stop.subscribe(),
            state,
        };
        let mut engine = Engine::new(parts, slots, exits_tx);
        let recovered = until_shutdown(engine.recover(), &mut shutdown, &mut None).await;
        if recovered.is_some() {
            self.triggers.request(Reason::Startup);
            self.serve(&mut engine, &mut exits, &mut requests, &mut shutdown)
                .await;
        }
        // Commands sent from now on are answered "liveroll is shutting down".
        drop(requests);
        self.shut_down(&mut engine).await;
        let _ = self.finished.send(());
    }
}
