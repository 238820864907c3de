//! The new process's side of an upgrade: what it inherited, whether its
//! configuration can take over in place, and the handshake with the old
//! process.
//!
//! Anything that fails here fails before this process accepts a single
//! connection or touches a child: it says why (on stderr, and to the old
//! process, which logs it) and exits, and the old process keeps serving.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Mutex;
use std::time::Duration;

use super::{Inherited, Message, ENV_VAR};
use crate::config::Config;
use crate::report::admin::Listeners;
use crate::update::state::StateFile;

pub struct Successor {
    pub inherited: Inherited,
    control: Mutex<UnixStream>,
}

impl Successor {
    /// The upgrade this process was started for, if any. The variable is
    /// removed, so nothing this process starts sees it.
    pub fn from_env() -> Option<Result<Successor, String>> {
        let text = std::env::var(ENV_VAR).ok()?;
        std::env::remove_var(ENV_VAR);
        Some(Self::parse(&text))
    }

    fn parse(text: &str) -> Result<Successor, String> {
        let inherited: Inherited = serde_json::from_str(text)
            .map_err(|e| format!("{ENV_VAR} is not what an old liveroll passes: {e}"))?;
        // SAFETY: the old process passed this descriptor to us alone.
        let control = unsafe { UnixStream::from_raw_fd(inherited.control_fd) };
        Ok(Successor {
            inherited,
            control: Mutex::new(control),
        })
    }

    /// What cannot change in place: the proxy's address (its socket is
    /// handed over as it is), the child ports and the state directory (they
    /// name the record of the children being taken over).
    pub fn check(&self, config: &Config) -> Result<(), String> {
        let old = &self.inherited;
        let new_ports = config.child_ports();
        if new_ports != old.child_ports {
            return Err(format!(
                "--child-port1/--child-port2 cannot change in place (running {}/{}, new {}/{}); stop liveroll and start it again to change them",
                old.child_ports[0], old.child_ports[1], new_ports[0], new_ports[1]
            ));
        }
        if config.listen_addr() != old.listen {
            return Err(format!(
                "--bind/--port cannot change in place (running {}, new {}); stop liveroll and start it again to change them",
                old.listen,
                config.listen_addr()
            ));
        }
        if config.state_dir() != old.state_dir {
            return Err(format!(
                "--state-dir cannot change in place (running {}, new {})",
                old.state_dir.display(),
                config.state_dir().display()
            ));
        }
        Ok(())
    }

    /// The admin and readiness listeners: the inherited ones where the
    /// address is unchanged, new ones where it changed.
    pub fn listeners(&self, config: &Config) -> Result<Listeners, String> {
        let take = |inherited: Option<(SocketAddr, RawFd)>,
                    wanted: Option<SocketAddr>,
                    flag: &str|
         -> Result<Option<TcpListener>, String> {
            // SAFETY: inherited from the old process for us alone.
            let inherited =
                inherited.map(|(addr, fd)| (addr, unsafe { TcpListener::from_raw_fd(fd) }));
            let listener = match (inherited, wanted) {
                (Some((addr, listener)), Some(wanted)) if addr == wanted => listener,
                (_, Some(wanted)) => TcpListener::bind(wanted)
                    .map_err(|e| format!("cannot listen on {wanted} ({flag}): {e}"))?,
                // Not wanted any more: closed here, and by the old process as it exits.
                (_, None) => return Ok(None),
            };
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(Some(listener))
        };
        Ok(Listeners {
            admin: take(self.inherited.admin, config.admin_listen, "--admin-listen")?,
            ready: take(self.inherited.ready, config.ready_listen, "--ready-listen")?,
        })
    }

    /// The state file, under the lock the old process holds.
    pub fn state(&self) -> Result<StateFile, String> {
        let old = &self.inherited;
        // SAFETY: the lock descriptor was inherited for us alone.
        unsafe { StateFile::inherit(&old.state_dir, old.child_ports, old.lock_fd) }
    }

    /// Tells the old process this one cannot take over (best effort: it
    /// also sees this process exit).
    pub fn refuse(&self, why: &str) {
        self.say(&Message::Failed(why.to_string()));
    }

    /// Tells the old process this one serves, and waits (bounded) for its
    /// answer: after it, this is the service's main process. A closed
    /// channel means the old process is gone, which ends the wait too.
    pub fn ready(&self, patience: Duration) -> Result<(), String> {
        self.say(&Message::Ready);
        let control = self.control.lock().unwrap();
        control
            .set_read_timeout(Some(patience))
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        match BufReader::new(&*control).read_line(&mut line) {
            Ok(0) => Ok(()),
            Ok(_) if Message::parse(&line) == Some(Message::Main) => Ok(()),
            Ok(_) => Err(format!("unexpected answer from the old process: {line:?}")),
            Err(e) => Err(format!("no answer from the old process: {e}")),
        }
    }

    fn say(&self, message: &Message) {
        let _ = self
            .control
            .lock()
            .unwrap()
            .write_all(message.line().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    fn successor(ports: [u16; 2], listen: &str) -> (Successor, UnixStream) {
        let (old, new) = UnixStream::pair().unwrap();
        let inherited = Inherited {
            old_pid: 1,
            control_fd: new.into_raw_fd(),
            lock_fd: -1,
            admin: None,
            ready: None,
            listen: listen.parse().unwrap(),
            child_ports: ports,
            state_dir: "/run/liveroll".into(),
            upgrade_sock: "/run/liveroll/upgrade.sock".into(),
        };
        let text = serde_json::to_string(&inherited).unwrap();
        (Successor::parse(&text).unwrap(), old)
    }

    fn config(args: &[&str]) -> Config {
        use clap::Parser;
        let mut all = vec![
            "liveroll", "--pull", "true", "--id", "true", "--exec", "true",
        ];
        all.extend(args);
        all.extend(["--state-dir", "/run/liveroll"]);
        Config::parse_from(all)
    }

    #[test]
    fn child_ports_and_the_proxy_address_cannot_change_in_place() {
        let (s, _old) = successor([9101, 9102], "0.0.0.0:8080");
        assert_eq!(s.check(&config(&[])), Ok(()));
        assert_eq!(s.check(&config(&["--interval", "5s"])), Ok(()));
        let err = s.check(&config(&["--child-port1", "9201"])).unwrap_err();
        assert!(
            err.starts_with("--child-port1/--child-port2 cannot change in place (running 9101/9102, new 9201/9102)"),
            "{err}"
        );
        let err = s.check(&config(&["--port", "8081"])).unwrap_err();
        assert!(
            err.starts_with("--bind/--port cannot change in place"),
            "{err}"
        );
    }

    #[test]
    fn the_handshake_is_ready_then_main() {
        let (s, old) = successor([9101, 9102], "0.0.0.0:8080");
        let old_side = std::thread::spawn(move || {
            let mut line = String::new();
            BufReader::new(&old).read_line(&mut line).unwrap();
            assert_eq!(Message::parse(&line), Some(Message::Ready));
            (&old).write_all(Message::Main.line().as_bytes()).unwrap();
        });
        s.ready(Duration::from_secs(30)).unwrap();
        old_side.join().unwrap();
    }
}
