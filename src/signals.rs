//! Signals: SIGHUP forces an update; SIGUSR2 hands over to a new liveroll
//! process (`update/upgrade.rs`); SIGTERM, SIGINT and SIGQUIT shut down
//! gracefully, after `--shutdown-delay`.
//!
//! Pingora on its own treats SIGINT as a fast exit that skips services (our
//! children would be orphaned), does not handle SIGHUP (the default action
//! kills the process), and reads SIGQUIT as "send the sockets, then stop
//! accepting five seconds later", whether or not the new process came up.
//! So liveroll owns all five and hands Pingora one graceful stop: after a
//! shutdown, or after a new process has taken over.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::report::event::{Event, SignalAction};
use crate::report::reporter::Reporter;
use crate::update::control::{Command, Control};
use crate::update::trigger::{Reason, Triggers};

/// How far stopping has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// A stop signal came: no update starts, `/ready` is 503, and requests
    /// are still served for `--shutdown-delay`.
    Requested,
    /// The delay is over: Pingora stops accepting and the drain begins.
    Now,
    /// A new liveroll process serves and owns the children: this one stops
    /// accepting, finishes its connections and exits, leaving the children
    /// running.
    HandedOver,
}

/// The sending side, kept by the signal task.
pub type StopSender = watch::Sender<Stop>;

/// Given to Pingora's `RunArgs`: resolves once the shutdown delay is over.
pub struct StopWatch(watch::Receiver<Stop>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut stop = self.0.clone();
        // An error means the sender is gone, which only happens on the way out.
        let _ = stop
            .wait_for(|&stop| matches!(stop, Stop::Now | Stop::HandedOver))
            .await;
        ShutdownSignal::GracefulTerminate
    }
}

impl StopWatch {
    /// Another view of the same stop state, for the rest of `main`.
    pub fn receiver(&self) -> watch::Receiver<Stop> {
        self.0.clone()
    }
}

pub fn stop_channel() -> (StopSender, StopWatch) {
    let (tx, rx) = watch::channel(Stop::Running);
    (tx, StopWatch(rx))
}

/// Installs the handlers now (before any child is started, so a signal can
/// never kill liveroll with children left behind) and serves them in a task.
pub fn listen(
    triggers: Arc<Triggers>,
    reporter: Arc<Reporter>,
    shutdown_delay: Duration,
    stop: Arc<StopSender>,
    control: Control,
) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = quit.recv() => "SIGQUIT",
                _ = usr2.recv() => "SIGUSR2",
            };
            let stopping = *stop.borrow() != Stop::Running;
            let action = match (name, stopping) {
                ("SIGHUP", false) => SignalAction::ForcedUpdate,
                ("SIGUSR2", false) => SignalAction::Upgrade,
                ("SIGHUP" | "SIGUSR2", true) => SignalAction::Ignored,
                (_, false) => SignalAction::Shutdown,
                // A second stop signal cuts --shutdown-delay short.
                (_, true) => SignalAction::ShutdownNow,
            };
            reporter.emit(Event::Signal { name, action });
            match action {
                SignalAction::ForcedUpdate => triggers.request(Reason::Sighup),
                SignalAction::Upgrade => {
                    // Queued like an operator's command, so it runs between
                    // updates; its outcome is logged by the engine.
                    let control = control.clone();
                    tokio::spawn(async move {
                        let _ = control.send(Command::Upgrade).await;
                    });
                }
                SignalAction::Ignored => {}
                SignalAction::ShutdownNow => {
                    stop.send_replace(Stop::Now);
                }
                SignalAction::Shutdown => {
                    // /ready turns 503 now (the reporter saw the signal);
                    // with --shutdown-delay, liveroll keeps serving meanwhile,
                    // so a load balancer in front notices first.
                    stop.send_replace(Stop::Requested);
                    let (stop, reporter) = (stop.clone(), reporter.clone());
                    tokio::spawn(async move {
                        if !shutdown_delay.is_zero() {
                            reporter.emit(Event::ShutdownDelay {
                                delay: shutdown_delay,
                            });
                            tokio::time::sleep(shutdown_delay).await;
                        }
                        stop.send_replace(Stop::Now);
                    });
                }
            }
        }
    });
    Ok(())
}
