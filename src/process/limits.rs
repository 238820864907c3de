//! The file descriptor limit: raised for liveroll, given back to children,
//! and what liveroll's own running out of descriptors looks like.

use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept back from `--max-connections`' default: listeners, the
/// log, the runtime, the probes, the admin port, `--pull`/`--id` pipes.
const RESERVE: u64 = 64;

/// The soft `RLIMIT_NOFILE` liveroll was started with; 0 until [`raise_nofile`].
static INHERITED_SOFT: AtomicU64 = AtomicU64::new(0);

/// The descriptor limit before and after [`raise_nofile`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub inherited: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft descriptor limit to the hard one, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: the soft default of 1024 is
/// a relic of `select(2)`, which liveroll does not use. Children get the
/// inherited limit back (see [`restore_for_child`]).
pub fn raise_nofile() -> NoFile {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return NoFile {
            inherited: 1024,
            soft: 1024,
            hard: 1024,
        };
    };
    INHERITED_SOFT.store(soft, Ordering::Relaxed);
    let raised = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    NoFile {
        inherited: soft,
        soft: raised,
        hard,
    }
}

/// For a child process, between fork and exec: puts back the soft limit
/// liveroll inherited, so a child sees the limits its operator set, and
/// programs that loop over every possible descriptor stay fast. Only calls
/// `getrlimit` and `setrlimit`, which are async-signal-safe.
pub fn restore_for_child() -> std::io::Result<()> {
    let soft = INHERITED_SOFT.load(Ordering::Relaxed);
    if soft == 0 {
        return Ok(());
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard)?;
    Ok(())
}

/// The default `--max-connections`: every client connection may need a
/// second descriptor for its upstream connection, idle pooled upstream
/// connections take up to `upstream_pool` more, and [`RESERVE`] is kept for
/// liveroll itself and the child's start. At least 16.
pub fn default_max_connections(nofile: u64, upstream_pool: usize) -> usize {
    let spare = nofile.saturating_sub(RESERVE + upstream_pool as u64);
    (spare / 2).max(16) as usize
}

/// Whether an OS error code means liveroll itself ran out of something
/// (descriptors, socket buffers, memory): never a child's fault.
pub fn is_exhaustion(code: i32) -> bool {
    use nix::errno::Errno;
    [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM].contains(&Errno::from_raw(code))
}

/// Whether an I/O error is one of [`is_exhaustion`]'s.
pub fn io_exhaustion(e: &std::io::Error) -> bool {
    e.raw_os_error().is_some_and(is_exhaustion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_leaves_room_for_upstreams_and_the_reserve() {
        assert_eq!(default_max_connections(1024, 128), 416);
        assert_eq!(default_max_connections(20000, 128), 9904);
        assert_eq!(default_max_connections(100, 128), 16);
    }

    #[test]
    fn only_running_out_is_exhaustion() {
        assert!(io_exhaustion(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(io_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!io_exhaustion(&std::io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
        assert!(!io_exhaustion(&std::io::Error::other("closed")));
    }
}
