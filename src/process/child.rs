//! One child process started from `--exec`, and everything it starts.
//!
//! The command runs as `sh -c` in a new process group with a marker in its
//! environment, so the shell, `docker run`, the real server and whatever
//! escapes the group are all found and stopped together ([`Tree`]):
//! retiring a child can never leave the real server behind holding the port.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::tree::{Ending, Tree, MARKER_VAR};
use super::{command, procfs, reaper};

pub struct Child {
    /// Pid of the `sh -c` leader, which is also the process group id.
    pub pid: i32,
    /// The leader's start time in clock ticks after boot: with the pid it
    /// names this process for good, also after a restart of liveroll.
    pub start_ticks: u64,
    pub tree: Tree,
    pub started: Instant,
    pub(super) exit: watch::Receiver<Option<ExitStatus>>,
    /// Started by an earlier liveroll process and taken over (`adopt.rs`):
    /// its exit is seen through a pidfd, and its exit status is not ours
    /// to read.
    pub(super) adopted: bool,
}

/// How [`Child::terminate`] went.
#[derive(Clone, Copy, Debug)]
pub struct Termination {
    pub ending: Ending,
    /// The shell's exit status, if it was seen in time.
    pub status: Option<ExitStatus>,
}

impl Child {
    /// Starts `cmd` in a new process group, marked with `marker`. Its stdout
    /// and stderr are liveroll's own, so journald sees them unchanged.
    /// `on_exit` runs (in a task) as soon as the shell exits, whatever the
    /// reason.
    pub fn spawn(
        cmd: &str,
        marker: &str,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> std::io::Result<Child> {
        let mut process = reaper::spawn(command::shell(cmd).env(MARKER_VAR, marker))?;
        let pid = process
            .id()
            .expect("a child that was just spawned has a pid") as i32;
        let start_ticks = procfs::stat(pid).map_or(0, |s| s.start_ticks);
        let (tx, exit) = watch::channel(None);
        tokio::spawn(async move {
            // `wait` only fails if the child was already reaped elsewhere.
            let status = process
                .wait()
                .await
                .unwrap_or_else(|_| ExitStatus::default());
            reaper::waited(pid);
            let _ = tx.send(Some(status));
            on_exit(status);
        });
        Ok(Child {
            pid,
            start_ticks,
            tree: Tree {
                leader: pid,
                marker: marker.to_string(),
            },
            started: Instant::now(),
            exit,
            adopted: false,
        })
    }

    /// The shell's exit status, once it has exited (never known for an
    /// adopted child).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self.adopted {
            true => None,
            false => *self.exit.borrow(),
        }
    }

    /// Whether the shell has exited.
    pub fn has_exited(&self) -> bool {
        self.exit.borrow().is_some()
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

    /// SIGTERM to the whole tree, SIGKILL after `kill_timeout` if anything
    /// of it is still there; returns once nothing of it runs.
    pub async fn terminate(&self, kill_timeout: Duration) -> Termination {
        let ending = self.tree.terminate(kill_timeout).await;
        // The leader is gone with its tree; its status follows in a moment.
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

    /// Runs `script` (which writes the pid of the process to watch to
    /// `$PIDFILE`) as a child and returns it with that pid.
    async fn child_with(script: &str, name: &str) -> (Child, i32, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("liveroll-child-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        let cmd = format!("export PIDFILE={}; {script}", pidfile.display());
        let child = Child::spawn(&cmd, &format!("test-{name}"), |_| {}).unwrap();
        let mut pid = None;
        for _ in 0..3000 {
            pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|text| text.trim().parse().ok());
            if pid.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let pid = pid.expect("the script wrote its pid within 30 s");
        (child, pid, dir)
    }

    #[tokio::test]
    async fn terminate_reaches_grandchildren_that_ignore_sigterm() {
        // A grandchild that ignores SIGTERM: only SIGKILL ends it.
        let script = r#"sh -c 'trap "" TERM; echo $$ > $PIDFILE.tmp; mv $PIDFILE.tmp $PIDFILE; while :; do sleep 0.05; done' & wait"#;
        let (child, grandchild, dir) = child_with(script, "ignores-term").await;
        let termination = child.terminate(Duration::from_millis(300)).await;
        assert_eq!(termination.ending, Ending::Killed);
        assert!(process_gone(grandchild), "grandchild {grandchild} survived");
        assert!(child.tree.members().is_empty());
        assert!(!child.exited().await.success(), "the shell died of SIGTERM");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn terminate_reaches_what_left_the_group() {
        // setsid: a new session and group; the shell then exits, so the
        // sleeper is orphaned too. Only the marker still ties it to the child.
        let script = r#"setsid sh -c 'echo $$ > $PIDFILE.tmp; mv $PIDFILE.tmp $PIDFILE; exec sleep 1000' & sleep 1000"#;
        let (child, escaped, dir) = child_with(script, "setsid").await;
        assert_ne!(
            procfs::stat(escaped).unwrap().pgrp,
            child.pid,
            "it left the group"
        );
        assert!(child.tree.contains(escaped));
        let termination = child.terminate(Duration::from_secs(5)).await;
        assert_eq!(termination.ending, Ending::Terminated);
        assert!(process_gone(escaped), "escaped {escaped} survived");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
