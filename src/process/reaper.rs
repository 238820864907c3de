//! liveroll as the reaper of what its children leave behind.
//!
//! As a child subreaper (`PR_SET_CHILD_SUBREAPER`), liveroll becomes the
//! parent of every process a child orphans (a double-forking daemon, the
//! app under `setsid -w` when its parent dies), instead of init. Such
//! processes stay visible under liveroll, are stopped with their child
//! (`tree.rs`), and when they exit liveroll reaps them, so no zombie is
//! left. The same holds when liveroll runs as PID 1 in a container.
//!
//! Only orphans are reaped here: the processes liveroll spawned itself are
//! waited for by tokio, and reaping one of those would steal its exit
//! status. So every spawn goes through [`spawn`], which records the pid
//! under the same lock the reaper holds while it looks.

use std::sync::Mutex;

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use super::procfs;

/// Pids liveroll spawned that tokio has not yet waited for.
static SPAWNED: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Spawns `command` with its pid recorded, so the reaper leaves it to tokio.
pub fn spawn(command: &mut tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    let mut spawned = SPAWNED.lock().unwrap();
    let child = command.spawn()?;
    if let Some(pid) = child.id() {
        spawned.push(pid as i32);
    }
    Ok(child)
}

/// Tokio has waited for `pid`: the record can go.
pub fn waited(pid: i32) {
    SPAWNED.lock().unwrap().retain(|&p| p != pid);
}

/// Makes liveroll the subreaper of its descendants and reaps orphans as
/// they exit. Call before the first child starts, inside the runtime.
pub fn start() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    let mut children = signal(SignalKind::child())?;
    tokio::spawn(async move {
        while children.recv().await.is_some() {
            reap_orphans();
        }
    });
    Ok(())
}

/// Reaps every exited child of ours that tokio is not waiting for.
fn reap_orphans() {
    let me = std::process::id() as i32;
    let spawned = SPAWNED.lock().unwrap();
    for (pid, stat) in procfs::all() {
        if stat.ppid == me && stat.exited() && !spawned.contains(&pid) {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}
