//! systemd's notification protocol (`Type=notify`), through `$NOTIFY_SOCKET`.
//! Without that variable every call here does nothing.
//!
//! READY=1 is sent once the first child serves, and again when a reload
//! (SIGHUP) has been handled; RELOADING=1 carries MONOTONIC_USEC as systemd
//! 253+ requires; STATUS= says what serves and what is happening.
//!
//! Written out rather than taken from a crate because the send must never
//! block: it happens in the signal handler and the supervisor loop, and a
//! datagram socket whose reader is slow blocks a blocking sender.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use log::debug;
use nix::time::{clock_gettime, ClockId};

/// Sends one message; a full or missing socket only costs a debug line.
fn send(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| {
        // `@name` is a Linux abstract socket, anything else a path.
        let addr = match path.as_encoded_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        socket.send_to_addr(message.as_bytes(), &addr)
    })();
    if let Err(e) = result {
        debug!("event=notify_failed message={message:?} error=\"{e}\"");
    }
}

/// What liveroll is doing now, for `systemctl status`.
pub fn status(text: &str) {
    send(&format!("STATUS={text}"));
}

/// A child serves: startup is done (or a reload finished).
pub fn ready(text: &str) {
    send(&format!("READY=1\nSTATUS={text}"));
}

/// A reload (SIGHUP) started.
pub fn reloading() {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(now) => {
            let usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1000;
            send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
        }
        Err(e) => debug!("event=notify_failed error=\"no monotonic clock: {e}\""),
    }
}

/// An upgrade: `pid`, the new liveroll process, is the service's main
/// process from now on (sent by the old one while it still is).
pub fn main_pid(pid: i32) {
    send(&format!("MAINPID={pid}"));
}

pub fn stopping() {
    send("STOPPING=1\nSTATUS=stopping");
}

/// How often to ping the watchdog: half of `WatchdogSec=` (systemd passes
/// it as `WATCHDOG_USEC`, for `WATCHDOG_PID` if that is set).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse() != Ok(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

pub fn watchdog() {
    send("WATCHDOG=1");
}
