//! The old process's side of an upgrade (SIGUSR2, `POST /upgrade`): start
//! a new liveroll from the binary now at our own path, with our command
//! line and environment, give it what it needs to take over (see
//! `handover/mod.rs`), and hand over only once it serves.
//!
//! Runs as an engine command, between updates, so no child starts or stops
//! meanwhile. Until the new process says `ready`, this one never stopped
//! accepting: if the new one exits, says why it cannot take over, or takes
//! too long (it is then killed with SIGKILL, which leaves the children
//! alone), the upgrade fails with one line saying why and nothing changed.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::handover::{self, sockets, Inherited, Message};
use crate::process::reaper;
use crate::report::notify;
use crate::signals::{Stop, StopSender};

/// Everything a process needs to hand over later, gathered at startup.
pub struct Handover {
    /// This binary's path as it was started; an upgrade runs what is at
    /// that path now.
    pub binary: PathBuf,
    /// The command line, without the program name.
    pub args: Vec<OsString>,
    /// Variables read from `LIVEROLL_ENV_FILE`: the new process reads the
    /// file again rather than inheriting them.
    pub env_file_keys: Vec<String>,
    pub listen: SocketAddr,
    pub admin: Option<(SocketAddr, RawFd)>,
    pub ready: Option<(SocketAddr, RawFd)>,
    pub child_ports: [u16; 2],
    pub state_dir: PathBuf,
    pub stop: Arc<StopSender>,
}

/// How long a new process may take to say `ready`: starting, receiving the
/// socket (Pingora's receiver looks once a second), adopting the children
/// (a health check each).
pub fn patience(health_timeout: Duration) -> Duration {
    health_timeout.min(Duration::from_secs(60)) + Duration::from_secs(15)
}

impl Handover {
    /// Starts the new process and waits for it to serve; on success this
    /// process has told systemd and the new one that it is the main process
    /// now, and stops accepting. Returns the new process's pid.
    pub async fn run(&self, lock_fd: RawFd, patience: Duration) -> Result<i32, String> {
        let proxy_fd = sockets::listening_fd(self.listen).ok_or_else(|| {
            format!(
                "cannot find this process's listening socket on {}",
                self.listen
            )
        })?;
        let (ours, theirs) =
            StdUnixStream::pair().map_err(|e| format!("cannot create a socket pair: {e}"))?;
        let sock = handover::upgrade_sock(&self.state_dir, self.child_ports);
        let inherited = Inherited {
            old_pid: std::process::id() as i32,
            control_fd: theirs.as_raw_fd(),
            lock_fd,
            admin: self.admin,
            ready: self.ready,
            listen: self.listen,
            child_ports: self.child_ports,
            state_dir: self.state_dir.clone(),
            upgrade_sock: sock.clone(),
        };
        let json = serde_json::to_string(&inherited).map_err(|e| e.to_string())?;
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(&self.args)
            .env(handover::ENV_VAR, json)
            // systemd's watchdog names our pid; the new process pings in
            // its own name once it is the main process.
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null());
        for key in &self.env_file_keys {
            command.env_remove(key);
        }
        let keep: Vec<RawFd> = [Some(theirs.as_raw_fd()), Some(lock_fd)]
            .into_iter()
            .chain([self.admin.map(|a| a.1), self.ready.map(|r| r.1)])
            .flatten()
            .collect();
        // SAFETY: runs in the forked child before exec and only clears
        // close-on-exec on descriptors that are open (fcntl is
        // async-signal-safe).
        unsafe {
            command.pre_exec(move || {
                for &fd in &keep {
                    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
                }
                Ok(())
            });
        }
        let mut child = reaper::spawn(&mut command)
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        drop(theirs);
        let pid = child.id().map_or(0, |p| p as i32);
        // If this wait is abandoned (a stop signal ends the engine's work),
        // the new process must not go on to adopt children this one stops.
        let mut abandoned = KillOnDrop(Some(pid));
        let started = Instant::now();

        // The socket, from a blocking thread; it gives up once the new
        // process is gone.
        let gone = Arc::new(AtomicBool::new(false));
        let sender = {
            let (gone, key) = (gone.clone(), self.listen.to_string());
            let deadline = started + patience;
            tokio::task::spawn_blocking(move || {
                sockets::send(&sock, &key, proxy_fd, deadline, || {
                    gone.load(Ordering::Relaxed)
                })
            })
        };

        let ours = tokio::net::UnixStream::from_std({
            ours.set_nonblocking(true).map_err(|e| e.to_string())?;
            ours
        })
        .map_err(|e| e.to_string())?;
        let (read, mut write) = ours.into_split();
        let mut lines = BufReader::new(read).lines();
        /// What ended the wait.
        enum Heard {
            Line(Option<String>),
            Exit(std::io::Result<std::process::ExitStatus>),
            Nothing,
        }
        let heard = tokio::select! {
            // A new process that refuses writes why, then exits: what it
            // wrote is in the socket by the time its exit can be seen, so
            // the line is looked at first.
            biased;
            line = lines.next_line() => Heard::Line(line.ok().flatten()),
            status = child.wait() => Heard::Exit(status),
            _ = tokio::time::sleep(patience) => Heard::Nothing,
        };
        let outcome = match heard {
            Heard::Line(Some(line)) => match Message::parse(&line) {
                Some(Message::Ready) => Ok(()),
                Some(Message::Failed(why)) => Err(format!("the new process refused: {why}")),
                _ => Err(format!("the new process said {line:?}")),
            },
            // It closed the channel: it exited (its status follows).
            Heard::Line(None) => Err(exited(&mut child, pid).await),
            Heard::Exit(Ok(status)) => Err(format!(
                "the new process (pid {pid}) exited before it was ready: {status}"
            )),
            Heard::Exit(Err(e)) => Err(format!("the new process (pid {pid}) was lost: {e}")),
            Heard::Nothing => {
                // SIGKILL: a new process that had started stopping would
                // take the children with it; killed, it takes nothing.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                Err(format!(
                    "the new process (pid {pid}) was not ready within {}; it was killed",
                    humantime::format_duration(patience)
                ))
            }
        };
        gone.store(true, Ordering::Relaxed);
        abandoned.0 = None;
        if let Err(why) = outcome {
            // Reaped in the background, whatever it is doing.
            let _ = sender.await;
            tokio::spawn(async move {
                let _ = child.wait().await;
                reaper::waited(pid);
            });
            return Err(why);
        }
        if let Ok(Err(e)) = sender.await {
            // It said ready, so it has the socket; this cannot happen.
            log::debug!("event=upgrade_socket_send error={e:?}");
        }
        // The order matters to systemd: MAINPID= while we still are the main
        // process, then the new one may send READY=1.
        notify::main_pid(pid);
        let _ = write.write_all(Message::Main.line().as_bytes()).await;
        self.stop.send_replace(Stop::HandedOver);
        tokio::spawn(async move {
            let _ = child.wait().await;
            reaper::waited(pid);
        });
        Ok(pid)
    }
}

/// SIGKILL for a new process whose handover was abandoned half way.
struct KillOnDrop(Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The error for a new process that closed the channel: its exit status
/// if it exits within a moment.
async fn exited(child: &mut tokio::process::Child, pid: i32) -> String {
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(status)) => {
            format!("the new process (pid {pid}) exited before it was ready: {status}")
        }
        _ => format!("the new process (pid {pid}) closed the handshake before it was ready"),
    }
}
