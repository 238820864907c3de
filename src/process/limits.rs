//! The file descriptor limit: what liveroll's own running out of
//! descriptors looks like.

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
