//! Why an update failed. A plain error: it says what went wrong and at which
//! step, and the reporter decides how to show it.

use std::fmt;

use crate::process::command::CommandError;
use crate::process::probe::HealthError;

/// The steps of an update that can fail, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Pull,
    Id,
    Slot,
    Exec,
    Health,
    /// The port answered, but from a process that is not the child's.
    Listener,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Pull => "pull",
            Step::Id => "id",
            Step::Slot => "slot",
            Step::Exec => "exec",
            Step::Health => "health",
            Step::Listener => "listener",
        }
    }
}

#[derive(Debug)]
pub enum UpdateError {
    Pull(CommandError),
    Id(CommandError),
    /// The ports of the free slots, each held by another process.
    NoSlot(Vec<u16>),
    Spawn(std::io::Error),
    /// `<<ID>>` would put this character into a shell command line.
    UnsafeId(char),
    Unhealthy {
        port: u16,
        pid: i32,
        error: HealthError,
    },
    /// The port is held by a process outside the child's tree: a squatter
    /// answered the health check, not the child.
    NotOurs {
        port: u16,
        pid: i32,
        /// The holder's pid and name, if it could be seen.
        holder: Option<(i32, String)>,
    },
}

impl UpdateError {
    pub fn step(&self) -> Step {
        match self {
            UpdateError::Pull(_) => Step::Pull,
            UpdateError::Id(_) => Step::Id,
            UpdateError::NoSlot(_) => Step::Slot,
            UpdateError::Spawn(_) | UpdateError::UnsafeId(_) => Step::Exec,
            UpdateError::Unhealthy { .. } => Step::Health,
            UpdateError::NotOurs { .. } => Step::Listener,
        }
    }

    /// Whether the new child died before it was healthy (a crash, for the
    /// back-off), rather than staying unhealthy or never starting.
    pub fn child_died(&self) -> bool {
        matches!(
            self,
            UpdateError::Unhealthy {
                error: HealthError::Exited(_),
                ..
            }
        )
    }
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Pull(e) => write!(f, "--pull failed: {e}"),
            UpdateError::Id(e) => write!(f, "--id failed: {e}"),
            UpdateError::NoSlot(ports) => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                write!(
                    f,
                    "child port {} already in use by another process",
                    ports.join(" and ")
                )
            }
            UpdateError::Spawn(e) => write!(f, "--exec could not start: {e}"),
            UpdateError::UnsafeId(c) => write!(
                f,
                "the ID contains {c:?}, which is not safe to put into a command with <<ID>>"
            ),
            UpdateError::NotOurs { port, holder, .. } => {
                let who = match holder {
                    Some((pid, name)) => format!("pid {pid} ({name})"),
                    None => "a process liveroll cannot see".into(),
                };
                write!(
                    f,
                    "port {port} is held by {who}, not by the new child; it was terminated"
                )
            }
            UpdateError::Unhealthy { error, .. } => {
                write!(f, "new child {error}; it was terminated")
            }
        }
    }
}

impl std::error::Error for UpdateError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_failed_without_log_syntax() {
        let e = UpdateError::NoSlot(vec![9101, 9102]);
        assert_eq!(e.step(), Step::Slot);
        assert_eq!(
            e.to_string(),
            "child port 9101 and 9102 already in use by another process"
        );
        let e = UpdateError::Spawn(std::io::Error::other("no sh"));
        assert_eq!(e.step().as_str(), "exec");
        assert_eq!(e.to_string(), "--exec could not start: no sh");
        assert!(!e.child_died());
    }
}
