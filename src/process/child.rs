//! One child process started from `--exec`, and its whole process group.
//!
//! The command runs as `sh -c` in a new process group, so the shell, `docker
//! run` and whatever else it starts are signalled together: retiring a child
//! can never leave the real server behind as an orphan holding the port.
//! Every group liveroll starts is recorded until it is gone, so shutdown (and
//! a last sweep in `main`) reaches all of them.

use std::process::ExitStatus;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{info, warn};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::process::command as commands;

/// Process groups started and not yet seen gone.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());

pub struct Child {
    pub slot: usize,
    pub port: u16,
    pub id: String,
    pub generation: u64,
    pub started: Instant,
    /// Pid of the `sh -c` leader, which is also the process group id.
    pub pid: i32,
    exit: watch::Receiver<Option<ExitStatus>>,
}

impl Child {
    /// Starts `cmd` in a new process group. Its stdout and stderr are
    /// liveroll's own, so journald sees them unchanged. `on_exit` runs (in a
    /// task) as soon as the shell exits, whatever the reason.
    pub fn spawn(
        cmd: &str,
        slot: usize,
        port: u16,
        id: &str,
        generation: u64,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> std::io::Result<Child> {
        let mut process = commands::shell(cmd).spawn()?;
        let pid = process
            .id()
            .expect("a child that was just spawned has a pid") as i32;
        GROUPS.lock().unwrap().push(pid);

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
            slot,
            port,
            id: id.to_string(),
            generation,
            started: Instant::now(),
            pid,
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
    pub async fn terminate(&self, kill_timeout: Duration) {
        terminate_group(self.pid, kill_timeout).await;
        // The leader is gone with its group; its status follows in a moment.
        let status = tokio::time::timeout(Duration::from_secs(1), self.exited()).await;
        info!(
            "event=terminated slot={} port={} pid={} id={} status={:?}",
            self.slot + 1,
            self.port,
            self.pid,
            self.id,
            status.map_or_else(|_| "unknown".into(), |s| s.to_string())
        );
    }
}

async fn terminate_group(pgid: i32, kill_timeout: Duration) {
    // A group already gone is never signalled: its id may belong to someone
    // else by now.
    if !group_gone(pgid) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
        if !wait_group_gone(pgid, kill_timeout).await {
            warn!("event=kill pgid={pgid} reason=\"still running {kill_timeout:?} after SIGTERM\"");
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            // SIGKILL cannot be ignored; this wait only covers the kernel's teardown.
            wait_group_gone(pgid, Duration::from_secs(5)).await;
        }
    }
    GROUPS.lock().unwrap().retain(|&g| g != pgid);
}

async fn wait_group_gone(pgid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if group_gone(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Terminates every group still recorded, all at once (shutdown).
pub async fn terminate_all(kill_timeout: Duration) {
    let groups = GROUPS.lock().unwrap().clone();
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|pgid| tokio::spawn(terminate_group(pgid, kill_timeout)))
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// Last resort when the supervisor could not finish: SIGKILL whatever is left.
pub fn kill_all_now() {
    for pgid in GROUPS.lock().unwrap().drain(..) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Whether no live (non-zombie) process is left in group `pgid`. Orphaned
/// members are reaped by init, not by us, so a zombie can linger a moment: it
/// holds no port and counts as gone.
pub fn group_gone(pgid: i32) -> bool {
    if killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) {
        return true;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    !entries.flatten().any(|entry| {
        stat_fields(&entry.path().join("stat"))
            .is_some_and(|(state, pgrp)| pgrp == pgid && state != 'Z' && state != 'X')
    })
}

/// Whether process `pid` has exited (gone, or only a zombie left).
pub fn process_gone(pid: i32) -> bool {
    stat_fields(std::path::Path::new(&format!("/proc/{pid}/stat")))
        .is_none_or(|(state, _)| state == 'Z' || state == 'X')
}

/// State and process group from `/proc/PID/stat`. The command name may hold
/// spaces and parentheses, so fields are counted after its last `)`.
fn stat_fields(path: &std::path::Path) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let pgrp = rest.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive() {
        let me = std::process::id() as i32;
        assert!(!process_gone(me));
        assert!(!group_gone(nix::unistd::getpgrp().as_raw()));
        assert!(process_gone(i32::MAX));
    }

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
        let child = Child::spawn(&cmd, 0, 1, "test", 1, move |st| tx.send(st).unwrap()).unwrap();
        let grandchild: i32 = loop {
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                break text.trim().parse().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        child.terminate(Duration::from_millis(300)).await;
        assert!(process_gone(grandchild), "grandchild {grandchild} survived");
        assert!(group_gone(child.pid));
        assert!(!child.exited().await.success(), "the shell died of SIGTERM");
        assert!(
            rx.recv_timeout(Duration::from_secs(30)).is_ok(),
            "on_exit ran"
        );
        assert!(!GROUPS.lock().unwrap().contains(&child.pid));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
