//! One child process started from `--exec`, and its whole process group.
//!
//! The command runs as `sh -c` in a new process group, so the shell, `docker
//! run` and whatever else it starts are signalled together: retiring a child
//! can never leave the real server behind as an orphan holding the port.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::command;
use super::group::{self, Ending};

pub struct Child {
    /// Pid of the `sh -c` leader, which is also the process group id.
    pub pid: i32,
    pub started: Instant,
    exit: watch::Receiver<Option<ExitStatus>>,
}

/// How [`Child::terminate`] went.
#[derive(Clone, Copy, Debug)]
pub struct Termination {
    pub ending: Ending,
    /// The shell's exit status, if it was seen in time.
    pub status: Option<ExitStatus>,
}

impl Child {
    /// Starts `cmd` in a new process group. Its stdout and stderr are
    /// liveroll's own, so journald sees them unchanged. `on_exit` runs (in a
    /// task) as soon as the shell exits, whatever the reason.
    pub fn spawn(
        cmd: &str,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> std::io::Result<Child> {
        let mut process = command::shell(cmd).spawn()?;
        let pid = process
            .id()
            .expect("a child that was just spawned has a pid") as i32;
        let (tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            // `wait` only fails if the child was already reaped elsewhere.
            let status = process
                .wait()
                .await
                .unwrap_or_else(|_| ExitStatus::default());
            let _ = tx.send(Some(status));
            on_exit(status);
        });
        Ok(Child {
            pid,
            started: Instant::now(),
            exit,
        })
    }

    /// The shell's exit status, once it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Resolves when the shell exits.
    pub async fn exited(&self) -> ExitStatus {
        let mut exit = self.exit.clone();
        let status = match exit.wait_for(Option::is_some).await {
            Ok(status) => status.unwrap_or_default(),
            // The watcher task is gone only when its runtime is shutting down.
            Err(_) => ExitStatus::default(),
        };
        status
    }

    /// SIGTERM to the whole group, SIGKILL after `kill_timeout` if any member
    /// is still there; returns once the group is gone.
    pub async fn terminate(&self, kill_timeout: Duration) -> Termination {
        let ending = group::terminate(self.pid, kill_timeout).await;
        // The leader is gone with its group; its status follows in a moment.
        let status = tokio::time::timeout(Duration::from_secs(1), self.exited())
            .await
            .ok();
        Termination { ending, status }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::procfs::process_gone;

    #[tokio::test]
    async fn terminate_reaches_grandchildren_that_ignore_sigterm() {
        let dir = std::env::temp_dir().join(format!("liveroll-child-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        // A grandchild that ignores SIGTERM: only the group SIGKILL ends it.
        let cmd = format!(
            "sh -c 'trap \"\" TERM; echo $$ > {p}.tmp; mv {p}.tmp {p}; while :; do sleep 0.05; done' & wait",
            p = pidfile.display()
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let child = Child::spawn(&cmd, move |st| tx.send(st).unwrap()).unwrap();
        let grandchild: i32 = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                break text.trim().parse().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let termination = child.terminate(Duration::from_millis(300)).await;
        assert_eq!(termination.ending, Ending::Killed);
        assert!(process_gone(grandchild), "grandchild {grandchild} survived");
        assert!(group::is_gone(child.pid));
        assert!(!child.exited().await.success(), "the shell died of SIGTERM");
        assert!(
            rx.recv_timeout(Duration::from_secs(30)).is_ok(),
            "on_exit ran"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
