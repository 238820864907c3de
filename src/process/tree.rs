//! A child's whole process tree, and stopping it.
//!
//! A child is more than its `sh -c` leader: everything it starts belongs to
//! it, also what leaves its process group (`setsid`) or its parent (a daemon
//! that double-forks). A process is counted as the child's when it
//! - is in the leader's process group, or
//! - descends from the leader, or
//! - carries the child's marker in its environment (`LIVEROLL_CHILD=...`,
//!   set for the leader and inherited by everything it starts; this is what
//!   finds a double-forked daemon, whose parent is gone).
//!
//! Stopping signals every member, waits for each to exit (a pidfd each: no
//! polling), looks again for members that appeared meanwhile, and sends
//! SIGKILL to whatever is left at the kill timeout.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::procfs::{self, Stat};

/// The environment variable that marks a child's processes.
pub const MARKER_VAR: &str = "LIVEROLL_CHILD";

/// What names one child's tree: its leader and its marker value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// The `sh -c` leader, also the process group id.
    pub leader: i32,
    /// The value of [`MARKER_VAR`] in its processes.
    pub marker: String,
}

/// A leader no process has, nor any process group or parent.
const NO_LEADER: i32 = -1;

/// How a tree ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Nothing of it was left: nothing was signalled.
    AlreadyGone,
    /// SIGTERM was enough.
    Terminated,
    /// Something was still running at the kill timeout and got SIGKILL.
    Killed,
}

impl Tree {
    /// The processes carrying `marker`, with no leader to go by (it is gone,
    /// and its pid may belong to someone else by now).
    pub fn marked(marker: &str) -> Tree {
        Tree {
            leader: NO_LEADER,
            marker: marker.to_string(),
        }
    }

    /// The live (non-zombie) processes of this tree now, with their stat.
    pub fn members(&self) -> Vec<(i32, Stat)> {
        let all: HashMap<i32, Stat> = procfs::all().filter(|(_, s)| !s.exited()).collect();
        let needle = format!("{MARKER_VAR}={}", self.marker);
        let mut members: Vec<(i32, Stat)> = all
            .iter()
            .filter(|&(&pid, stat)| {
                stat.pgrp == self.leader
                    || pid == self.leader
                    || descends_from(pid, self.leader, &all)
                    || procfs::environ_has(pid, &needle)
            })
            .map(|(&pid, &stat)| (pid, stat))
            .collect();
        members.sort_unstable_by_key(|&(pid, _)| pid);
        members
    }

    /// Whether `pid` is one of this tree's processes.
    pub fn contains(&self, pid: i32) -> bool {
        self.members().iter().any(|&(member, _)| member == pid)
    }

    /// SIGTERM to every member, SIGKILL after `kill_timeout` to whatever is
    /// left; returns once nothing of the tree runs.
    pub async fn terminate(&self, kill_timeout: Duration) -> Ending {
        let members = self.members();
        if members.is_empty() {
            return Ending::AlreadyGone;
        }
        self.signal(&members, Signal::SIGTERM);
        if self.wait_gone(Instant::now() + kill_timeout).await {
            return Ending::Terminated;
        }
        self.kill_now();
        // SIGKILL cannot be ignored; this bound only covers the kernel's teardown.
        self.wait_gone(Instant::now() + Duration::from_secs(5))
            .await;
        Ending::Killed
    }

    /// SIGKILL to every member, without waiting (the last resort at exit).
    pub fn kill_now(&self) {
        let members = self.members();
        self.signal(&members, Signal::SIGKILL);
    }

    fn signal(&self, members: &[(i32, Stat)], signal: Signal) {
        // The group as a whole (which also reaches a member forked since the
        // look), but only while it has members: an id whose group is gone
        // may belong to someone else by now. Then every member one by one.
        if members.iter().any(|(_, stat)| stat.pgrp == self.leader) {
            let _ = killpg(Pid::from_raw(self.leader), signal);
        }
        for &(pid, _) in members {
            let _ = kill(Pid::from_raw(pid), signal);
        }
    }

    /// Waits until no member is left or `deadline` passes; returns whether
    /// none is left.
    async fn wait_gone(&self, deadline: Instant) -> bool {
        loop {
            let members = self.members();
            if members.is_empty() {
                return true;
            }
            // One after the other: all must end anyway. Members may fork
            // while we wait, so the tree is looked at again after these.
            let exits = async {
                for (pid, _) in members {
                    exited(pid).await;
                }
            };
            if tokio::time::timeout_at(deadline, exits).await.is_err() {
                return self.members().is_empty();
            }
        }
    }
}

/// Whether `pid`'s chain of parents reaches `ancestor`.
fn descends_from(pid: i32, ancestor: i32, all: &HashMap<i32, Stat>) -> bool {
    let mut at = pid;
    // Bounded: a pid table cannot loop, but a racy read could.
    for _ in 0..64 {
        let Some(stat) = all.get(&at) else {
            return false;
        };
        if stat.ppid == ancestor {
            return true;
        }
        if stat.ppid <= 1 {
            return false;
        }
        at = stat.ppid;
    }
    false
}

/// Resolves when process `pid` exits (or at once if it is gone).
pub async fn exited(pid: i32) {
    match pidfd(pid) {
        // SAFETY: an OwnedFd stays open and refers to the same pidfd for as
        // long as the AsyncFd that owns it lives.
        Ok(fd) => match unsafe { AsyncFd::register(fd) } {
            // A pidfd turns readable when its process exits.
            Ok(fd) => {
                let _ = fd.readable().await;
            }
            Err(_) => poll_gone(pid).await,
        },
        Err(Errno::ESRCH) => {}
        // No pidfd (an old kernel, or out of descriptors): look now and then.
        Err(_) => poll_gone(pid).await,
    }
}

async fn poll_gone(pid: i32) {
    while !procfs::process_gone(pid) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pidfd(pid: i32) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // that we own, or -1 with errno set.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the descriptor was just created for us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn exited_resolves_when_a_process_ends() {
        let mut child = tokio::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id().unwrap() as i32;
        let reaped = tokio::spawn(async move { child.wait().await });
        exited(pid).await;
        reaped.await.unwrap().unwrap();
        assert!(procfs::process_gone(pid));
        // And at once for a process that is not there.
        exited(i32::MAX).await;
    }

    #[test]
    fn descent_follows_parents() {
        let stat = |ppid| Stat {
            state: 'S',
            ppid,
            pgrp: 0,
            start_ticks: 0,
        };
        let all: HashMap<i32, Stat> =
            [(10, stat(1)), (11, stat(10)), (12, stat(11)), (20, stat(1))]
                .into_iter()
                .collect();
        assert!(descends_from(12, 10, &all));
        assert!(descends_from(11, 10, &all));
        assert!(!descends_from(20, 10, &all));
        assert!(!descends_from(10, 10, &all));
    }
}
