//! Signals: SIGHUP forces an update; SIGTERM, SIGINT and SIGQUIT shut down
//! gracefully.
//!
//! Pingora on its own treats SIGINT as a fast exit that skips services (our
//! children would be orphaned), does not handle SIGHUP (the default action
//! kills the process), and reads SIGQUIT as "hand the sockets to a new
//! binary", which cannot work with children bound to fixed ports. So liveroll
//! owns all four and hands Pingora one graceful stop.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::info;
use pingora_core::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::report::notify;
use crate::report::status::Status;
use crate::update::trigger::{Reason, Triggers};

/// Given to Pingora's `RunArgs`: resolves once a stop signal arrived.
pub struct StopWatch(watch::Receiver<bool>);

#[async_trait]
impl ShutdownSignalWatch for StopWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut stop = self.0.clone();
        // An error means the listener is gone, which only happens on the way out.
        let _ = stop.wait_for(|&stop| stop).await;
        ShutdownSignal::GracefulTerminate
    }
}

pub fn stop_channel() -> (watch::Sender<bool>, StopWatch) {
    let (tx, rx) = watch::channel(false);
    (tx, StopWatch(rx))
}

/// Installs the handlers now (before any child is started, so a signal can
/// never kill liveroll with children left behind) and serves them in a task.
pub fn listen(
    triggers: Arc<Triggers>,
    status: Arc<Status>,
    shutdown_delay: Duration,
    stop: Arc<watch::Sender<bool>>,
) -> std::io::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    tokio::spawn(async move {
        let mut stopping = false;
        loop {
            let name = tokio::select! {
                _ = hup.recv() => {
                    if stopping {
                        info!("event=signal signal=SIGHUP action=ignored reason=stopping");
                        continue;
                    }
                    info!("event=signal signal=SIGHUP action=forced-update");
                    notify::reloading();
                    triggers.request(Reason::Sighup);
                    continue;
                }
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                _ = quit.recv() => "SIGQUIT",
            };
            if std::mem::replace(&mut stopping, true) {
                // A second stop signal cuts --shutdown-delay short.
                info!("event=signal signal={name} action=shutdown-now");
                stop.send_replace(true);
                continue;
            }
            info!("event=signal signal={name} action=shutdown");
            // /ready turns 503 now; with --shutdown-delay, liveroll keeps
            // serving meanwhile, so a load balancer in front notices first.
            status.stopping();
            let stop = stop.clone();
            tokio::spawn(async move {
                if !shutdown_delay.is_zero() {
                    info!(
                        "event=shutdown_delay delay={}",
                        humantime::format_duration(shutdown_delay)
                    );
                    tokio::time::sleep(shutdown_delay).await;
                }
                stop.send_replace(true);
            });
        }
    });
    Ok(())
}
