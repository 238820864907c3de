//! Taking over a child that an earlier liveroll process started: on an
//! upgrade (the old process hands its children to the new one) and at
//! startup after a restart (its children survived it).
//!
//! Such a child is not our child in the kernel's sense: its parent is the
//! old liveroll, or init once that is gone, so we cannot `wait` for it.
//! Its exit is seen through a pidfd instead, and it is stopped like any
//! child, through its process tree (group, descendants, marker).
//!
//! A child is adopted only if it is provably the one recorded and works:
//! its leader is the very process recorded (pid and start time), whoever
//! listens on its port belongs to its tree, and its health check answers
//! 200. Anything less and it is not ours to trust.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::child::Child;
use super::listener::{self, Listening};
use super::tree::{self, Tree};
use super::{probe, procfs};

/// A child as an earlier liveroll process recorded it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub pid: i32,
    pub start_ticks: u64,
    pub marker: String,
    pub port: u16,
}

/// Why a recorded child cannot be adopted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its leader is gone, or its pid now names another process.
    Gone,
    /// Its port is held by `holder`, a process outside its tree, or by
    /// nobody at all.
    NotItsPort(String),
    /// Its health check did not answer 200.
    Unhealthy(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Gone => write!(f, "its process is gone"),
            Refusal::NotItsPort(who) => write!(f, "its port is not held by it ({who})"),
            Refusal::Unhealthy(why) => write!(f, "its health check failed: {why}"),
        }
    }
}

/// Checks that `candidate` is alive, holds its port and answers its health
/// check (one probe, bounded by `timeout`).
pub async fn check(
    candidate: &Candidate,
    healthcheck: &str,
    timeout: Duration,
) -> Result<(), Refusal> {
    let alive = procfs::stat(candidate.pid)
        .is_some_and(|s| s.start_ticks == candidate.start_ticks && !s.exited());
    if !alive {
        return Err(Refusal::Gone);
    }
    let tree = Tree {
        leader: candidate.pid,
        marker: candidate.marker.clone(),
    };
    match listener::on_port(candidate.port) {
        Listening::Nobody => return Err(Refusal::NotItsPort("nobody listens".into())),
        Listening::By(holders) => {
            if let Some(h) = holders.iter().find(|h| !tree.contains(h.pid)) {
                return Err(Refusal::NotItsPort(format!("pid {} {}", h.pid, h.name)));
            }
            if holders.is_empty() {
                return Err(Refusal::NotItsPort("a process we cannot see".into()));
            }
        }
    }
    match tokio::time::timeout(timeout, probe::probe(candidate.port, healthcheck)).await {
        Ok(Ok(200)) => Ok(()),
        Ok(Ok(code)) => Err(Refusal::Unhealthy(format!("HTTP {code}"))),
        Ok(Err(e)) => Err(Refusal::Unhealthy(e.to_string())),
        Err(_) => Err(Refusal::Unhealthy(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

impl Child {
    /// The child `candidate` (already [`check`]ed) as ours from now on.
    /// `on_exit` runs (in a task) when its leader exits.
    pub fn adopt(candidate: &Candidate, on_exit: impl FnOnce() + Send + 'static) -> Child {
        let (tx, exit) = watch::channel(None);
        let pid = candidate.pid;
        tokio::spawn(async move {
            tree::exited(pid).await;
            // Its status went to its parent, not to us.
            let _ = tx.send(Some(ExitStatus::default()));
            on_exit();
        });
        Child {
            pid,
            start_ticks: candidate.start_ticks,
            tree: Tree {
                leader: pid,
                marker: candidate.marker.clone(),
            },
            started: Instant::now(),
            exit,
            adopted: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_process_that_is_gone_or_was_replaced_is_refused() {
        let me = std::process::id() as i32;
        let start_ticks = procfs::stat(me).unwrap().start_ticks;
        let candidate = |pid, start_ticks| Candidate {
            pid,
            start_ticks,
            marker: "none".into(),
            port: 1,
        };
        let timeout = Duration::from_secs(1);
        assert_eq!(
            check(&candidate(i32::MAX, 0), "/", timeout).await,
            Err(Refusal::Gone)
        );
        // The same pid with another start time is another process.
        assert_eq!(
            check(&candidate(me, start_ticks + 1), "/", timeout).await,
            Err(Refusal::Gone)
        );
    }

    #[tokio::test]
    async fn an_adopted_child_is_seen_to_exit() {
        let mut sleeper = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = sleeper.id() as i32;
        let candidate = Candidate {
            pid,
            start_ticks: procfs::stat(pid).unwrap().start_ticks,
            marker: "none".into(),
            port: 1,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let child = Child::adopt(&candidate, move || {
            let _ = tx.send(());
        });
        let reaper = std::thread::spawn(move || sleeper.wait());
        rx.await.unwrap();
        assert!(child.has_exited());
        assert_eq!(child.exit_status(), None, "not ours to know");
        reaper.join().unwrap().unwrap();
    }
}
