//! Handing a running liveroll over to a new process (an upgrade of the
//! binary, or a new configuration), without a moment where nobody accepts.
//!
//! The old process (`update/upgrade.rs`) starts the new one from the binary
//! now at its own path, with its own command line and environment, and
//! gives it:
//! - the proxy's listening socket, sent over Pingora's `upgrade_sock`
//!   (the only way into Pingora's table of listening sockets), while the
//!   old process keeps accepting on the same socket;
//! - by inheritance: the admin and readiness listeners, the state file's
//!   lock (a `flock` is shared by both until the old one exits) and one end
//!   of a socket pair, the handshake channel ([`Message`]).
//!
//! The new process (`successor.rs`) checks that its configuration can take
//! over in place, adopts the children the state file lists, starts
//! accepting, and says `ready`. Only then does the old one tell systemd
//! `MAINPID=` of the new one, answer `main`, stop accepting and drain its
//! own connections, leaving the children running. Whatever fails before
//! `ready`, the old process never stopped serving and carries on.

pub mod env_file;
pub mod sockets;
pub mod successor;

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The variable that tells a new process it takes over from an old one.
pub const ENV_VAR: &str = "LIVEROLL_UPGRADE";

/// What the old process passes to the new one (as JSON in [`ENV_VAR`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inherited {
    pub old_pid: i32,
    /// The new process's end of the handshake socket pair.
    pub control_fd: RawFd,
    /// The state file's lock, held by both processes.
    pub lock_fd: RawFd,
    pub admin: Option<(SocketAddr, RawFd)>,
    pub ready: Option<(SocketAddr, RawFd)>,
    /// What the old process runs with and a new one cannot change in place.
    pub listen: SocketAddr,
    pub child_ports: [u16; 2],
    pub state_dir: PathBuf,
    /// Where the old process sends the proxy's listening socket.
    pub upgrade_sock: PathBuf,
}

/// One line of the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// New to old: the children are adopted and the new process accepts.
    Ready,
    /// New to old: the new process cannot take over, and why.
    Failed(String),
    /// Old to new: systemd was told the new process is the main one, and
    /// the old one stops accepting now.
    Main,
}

impl Message {
    pub fn line(&self) -> String {
        match self {
            Message::Ready => "ready\n".into(),
            Message::Main => "main\n".into(),
            // One line, whatever the error says.
            Message::Failed(why) => format!("failed {}\n", why.replace('\n', " ")),
        }
    }

    pub fn parse(line: &str) -> Option<Message> {
        let line = line.trim_end_matches('\n');
        match line {
            "ready" => Some(Message::Ready),
            "main" => Some(Message::Main),
            _ => line
                .strip_prefix("failed ")
                .map(|why| Message::Failed(why.to_string())),
        }
    }
}

/// Pingora's upgrade socket for the liveroll of these child ports: next to
/// the state file, so two liverolls on one host never share it.
pub fn upgrade_sock(state_dir: &Path, ports: [u16; 2]) -> PathBuf {
    state_dir.join(format!("upgrade-{}-{}.sock", ports[0], ports[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_single_lines() {
        for message in [
            Message::Ready,
            Message::Main,
            Message::Failed("--child-port1 cannot change".into()),
        ] {
            assert_eq!(Message::parse(&message.line()), Some(message));
        }
        assert_eq!(
            Message::Failed("two\nlines".into()).line(),
            "failed two lines\n"
        );
        assert_eq!(Message::parse("hello\n"), None);
    }
}
