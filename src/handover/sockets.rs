//! The proxy's listening socket on the old side of an upgrade: finding it
//! and sending it to the new process.
//!
//! Pingora binds the proxy's socket itself and keeps its descriptor in a
//! table liveroll cannot read, so the old process finds the descriptor the
//! way `ss -lp` would: the one of its own sockets that listens on the
//! proxy's address. The new process receives it through Pingora's upgrade
//! socket; the message is what Pingora's receiving side reads (the
//! listening address as text, the descriptor as `SCM_RIGHTS`). It is sent
//! at once, with short retries until the new process listens there,
//! rather than Pingora's own sender's one-second pauses.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    connect, getsockname, getsockopt, sendmsg, socket, sockopt, AddressFamily, ControlMessage,
    MsgFlags, SockFlag, SockType, SockaddrStorage, UnixAddr,
};

/// This process's descriptor that listens on `addr`, if any.
pub fn listening_fd(addr: SocketAddr) -> Option<RawFd> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    for entry in entries.flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|link| link.to_string_lossy().starts_with("socket:["));
        if !is_socket {
            continue;
        }
        // SAFETY: only looked at while this function runs; a descriptor
        // closed meanwhile makes the calls below fail, nothing more.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if getsockopt(&borrowed, sockopt::AcceptConn) != Ok(true) {
            continue;
        }
        if getsockname::<SockaddrStorage>(fd)
            .ok()
            .and_then(|a| to_std(&a))
            .is_some_and(|a| a == addr)
        {
            return Some(fd);
        }
    }
    None
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

/// Sends `fd`, the listening socket for `key` (the address as Pingora's
/// listener names it), to the Pingora upgrade socket at `path`. Retries
/// every few milliseconds while nobody listens there yet, until `deadline`
/// or until `give_up` says the new process is gone.
pub fn send(
    path: &Path,
    key: &str,
    fd: RawFd,
    deadline: Instant,
    give_up: impl Fn() -> bool,
) -> Result<(), String> {
    let addr = UnixAddr::new(path).map_err(|e| format!("{}: {e}", path.display()))?;
    loop {
        let sock = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => {
                let fds = [fd];
                let cmsg = [ControlMessage::ScmRights(&fds)];
                let iov = [IoSlice::new(key.as_bytes())];
                return sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
                    .map(|_| ())
                    .map_err(|e| format!("sending the listening socket: {e}"));
            }
            // Not there yet, or a stale file nobody listens on.
            Err(Errno::ENOENT | Errno::ECONNREFUSED) => {}
            Err(e) => return Err(format!("connecting to {}: {e}", path.display())),
        }
        if give_up() {
            return Err("the new process is gone".into());
        }
        if Instant::now() >= deadline {
            return Err(format!("nobody took the socket at {}", path.display()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_its_own_listening_socket_and_nothing_else() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(listening_fd(addr), Some(listener.as_raw_fd()));
        // A connected socket on another port is not a listener.
        let _client = std::net::TcpStream::connect(addr).unwrap();
        drop(listener);
        assert_eq!(listening_fd(addr), None);
    }

    #[test]
    fn sends_the_descriptor_with_its_key() {
        use std::os::unix::net::UnixListener;
        let path = std::env::temp_dir().join(format!("liveroll-sock-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let receiver = UnixListener::bind(&path).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        send(&path, "127.0.0.1:1", listener.as_raw_fd(), deadline, || {
            false
        })
        .unwrap();
        let (conn, _) = receiver.accept().unwrap();
        let mut buf = [0u8; 64];
        let (len, received) = {
            let mut cmsg = nix::cmsg_space!([RawFd; 2]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = nix::sys::socket::recvmsg::<UnixAddr>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .unwrap();
            let received: Vec<RawFd> = msg
                .cmsgs()
                .unwrap()
                .flat_map(|c| match c {
                    nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds,
                    _ => vec![],
                })
                .collect();
            (msg.bytes, received)
        };
        assert_eq!(&buf[..len], b"127.0.0.1:1");
        assert_eq!(received.len(), 1);
        nix::unistd::close(received[0]).unwrap();
        std::fs::remove_file(&path).unwrap();
        // Nobody there: gives up when told to.
        let err = send(&path, "k", listener.as_raw_fd(), deadline, || true).unwrap_err();
        assert_eq!(err, "the new process is gone");
    }
}
