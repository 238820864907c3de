//! Who listens on a port: the listening TCP sockets on it (from
//! `/proc/net/tcp` and `tcp6`) and the processes holding them (from the
//! `socket:[inode]` links in `/proc/PID/fd`). Used to make sure the process
//! that answered a health check is the child's, not a squatter's.

use std::collections::HashSet;
use std::fs;

use super::procfs;

/// A process holding a listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    /// Its command name (`/proc/PID/comm`).
    pub name: String,
    pub start_ticks: u64,
}

/// What listens on a port.
#[derive(Debug, PartialEq, Eq)]
pub enum Listening {
    /// No socket listens on the port in this network namespace (traffic to
    /// it may still be forwarded by NAT rules, as Docker does without its
    /// userland proxy).
    Nobody,
    /// The processes holding its listening sockets; empty if the sockets
    /// exist but no process could be seen holding them (another user's).
    By(Vec<Holder>),
}

/// The listening sockets on `port`, on any local address, and who holds them.
pub fn on_port(port: u16) -> Listening {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return Listening::Nobody;
    }
    let mut holders = Vec::new();
    for (pid, stat) in procfs::all() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            fs::read_link(fd.path()).is_ok_and(|link| {
                let link = link.to_string_lossy();
                link.strip_prefix("socket:[")
                    .and_then(|l| l.strip_suffix(']'))
                    .and_then(|inode| inode.parse().ok())
                    .is_some_and(|inode: u64| inodes.contains(&inode))
            })
        });
        if holds {
            let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            holders.push(Holder {
                pid,
                name: name.trim().to_string(),
                start_ticks: stat.start_ticks,
            });
        }
    }
    Listening::By(holders)
}

/// Inodes of the sockets listening on `port`.
fn listening_inodes(port: u16) -> HashSet<u64> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .flat_map(|table| parse_listeners(&table, port))
        .collect()
}

/// The inodes of the rows of a `/proc/net/tcp`-style table that listen on
/// `port`. Columns: `sl local_address rem_address st ... uid timeout inode`;
/// the local address ends in `:PORT` in hex, and `st` is `0A` for LISTEN.
fn parse_listeners(table: &str, port: u16) -> Vec<u64> {
    let want = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let listening = cols.get(3) == Some(&"0A");
            let on_port = cols.get(1).is_some_and(|local| local.ends_with(&want));
            (listening && on_port).then(|| cols.get(9)?.parse().ok())?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:238D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4711 1 0000000000000000 100 0 0 10 0
   1: 00000000:238D 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4712 1 0000000000000000 100 0 0 10 0
   2: 0100007F:238D 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4713 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:238E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4714 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listening_rows_on_the_port_count() {
        // 0x238D is 9101: two listeners (loopback and any address), one
        // established connection that is not a listener, one other port.
        assert_eq!(parse_listeners(TABLE, 9101), vec![4711, 4712]);
        assert_eq!(parse_listeners(TABLE, 9102), vec![4714]);
        assert!(parse_listeners(TABLE, 80).is_empty());
    }

    #[test]
    fn a_listener_of_this_process_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        match on_port(port) {
            Listening::By(holders) => {
                assert!(holders.iter().any(|h| h.pid == me), "{holders:?}")
            }
            other => panic!("{other:?}"),
        }
        drop(listener);
        assert_eq!(on_port(port), Listening::Nobody);
    }
}
