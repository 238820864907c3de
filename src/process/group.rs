//! Stopping a whole process group: SIGTERM, then SIGKILL if anything is left
//! after the timeout, and waiting until no live member remains.
//!
//! Members that are not liveroll's own children cannot be waited for with
//! `waitpid`; a pidfd per member tells when each exits, so the wait needs no
//! polling.

use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use super::procfs;

/// How a group ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// It was already gone: nothing was signalled.
    AlreadyGone,
    /// SIGTERM was enough.
    Terminated,
    /// Something was still running at the kill timeout and got SIGKILL.
    Killed,
}

/// SIGTERM to the whole group, SIGKILL after `kill_timeout` if any member is
/// still there; returns once the group is gone.
pub async fn terminate(pgid: i32, kill_timeout: Duration) -> Ending {
    // A group already gone is never signalled: its id may belong to someone
    // else by now.
    if is_gone(pgid) {
        return Ending::AlreadyGone;
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
    if wait_gone(pgid, Instant::now() + kill_timeout).await {
        return Ending::Terminated;
    }
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    // SIGKILL cannot be ignored; this bound only covers the kernel's teardown.
    wait_gone(pgid, Instant::now() + Duration::from_secs(5)).await;
    Ending::Killed
}

/// SIGKILL to the group, without waiting (the last resort at exit).
pub fn kill_now(pgid: i32) {
    let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
}

/// Whether no live (non-zombie) process is left in group `pgid`. Orphaned
/// members are reaped by init, not by us, so a zombie can linger a moment: it
/// holds no port and counts as gone.
pub fn is_gone(pgid: i32) -> bool {
    killpg(Pid::from_raw(pgid), None) == Err(Errno::ESRCH) || members(pgid).is_empty()
}

fn members(pgid: i32) -> Vec<i32> {
    procfs::all()
        .filter(|(_, stat)| stat.pgrp == pgid && !stat.exited())
        .map(|(pid, _)| pid)
        .collect()
}

/// Waits until the group is gone or `deadline` passes; returns whether it is gone.
async fn wait_gone(pgid: i32, deadline: Instant) -> bool {
    loop {
        let members = members(pgid);
        if members.is_empty() {
            return true;
        }
        // One after the other: all must end anyway. Members may fork while
        // we wait, so the group is looked at again once these are gone.
        let exits = async {
            for pid in members {
                exited(pid).await;
            }
        };
        if tokio::time::timeout_at(deadline, exits).await.is_err() {
            return is_gone(pgid);
        }
    }
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
    fn own_group_is_alive() {
        assert!(!is_gone(nix::unistd::getpgrp().as_raw()));
    }
}
