//! The record of children, on disk: what this liveroll started (pid, start
//! time, marker, port, ID, and its `--stop` command as expanded), rewritten
//! on every change. After a crash (SIGKILL, the OOM killer) the next start
//! reads it and stops what was left behind before it uses the slots.
//!
//! A lock file next to it (`flock`) says the record's owner is alive: a
//! second liveroll on the same child ports is refused instead of stopping
//! the first one's children.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

/// One child as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedChild {
    pub slot: usize,
    pub port: u16,
    pub pid: i32,
    /// With the pid, names the process for good: a reused pid never matches.
    pub start_ticks: u64,
    pub id: String,
    pub generation: u64,
    /// The value of `LIVEROLL_CHILD` in its processes.
    pub marker: String,
    /// Its `--stop` command with `<<PORT>>` and `<<ID>>` expanded.
    pub stop: Option<String>,
    /// It was published to the proxy: the one child a new liveroll process
    /// may take over as it is (one still starting, warm or draining is
    /// stopped instead).
    #[serde(default)]
    pub serving: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The liveroll that wrote it.
    pub owner_pid: i32,
    pub children: Vec<SavedChild>,
    /// An ID rolled back from, which automatic updates skip.
    #[serde(default)]
    pub quarantined: Option<String>,
}

/// The state file of one pair of child ports, held locked while liveroll runs.
pub struct StateFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl StateFile {
    /// Takes the lock for `ports` in `dir` (creating the directory), or says
    /// who holds it.
    pub fn open(dir: &Path, ports: [u16; 2]) -> Result<StateFile, String> {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let name = format!("children-{}-{}", ports[0], ports[1]);
        let lock_path = dir.join(format!("{name}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(mut file, _)| {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                format!(
                    "another liveroll (pid {}) uses child ports {} and {} (lock {})",
                    holder.trim(),
                    ports[0],
                    ports[1],
                    lock_path.display()
                )
            })?;
        // Who holds it, for the message above.
        let _ = fs::write(&lock_path, format!("{}\n", std::process::id()));
        Ok(StateFile {
            path: dir.join(format!("{name}.json")),
            _lock: lock,
        })
    }

    /// On an upgrade: the lock the old process holds, inherited as
    /// descriptor `fd`. A `flock` belongs to the open file, not to a
    /// process, so both hold it until the old one exits; a third liveroll
    /// is refused throughout, and no moment exists without an owner.
    ///
    /// # Safety
    /// `fd` must be the old process's lock file, inherited and owned by
    /// nothing else in this process.
    pub unsafe fn inherit(dir: &Path, ports: [u16; 2], fd: RawFd) -> Result<StateFile, String> {
        let name = format!("children-{}-{}", ports[0], ports[1]);
        // SAFETY: the caller guarantees `fd` is ours alone.
        let file = unsafe { File::from_raw_fd(fd) };
        // Locking again through the same open file cannot conflict with the
        // lock it already holds: this only checks the descriptor is that lock.
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| format!("the inherited state lock (fd {fd}) is not usable: {e}"))?;
        let _ = fs::write(
            dir.join(format!("{name}.lock")),
            format!("{}\n", std::process::id()),
        );
        Ok(StateFile {
            path: dir.join(format!("{name}.json")),
            _lock: lock,
        })
    }

    /// The lock's descriptor, for a new process to inherit on an upgrade.
    pub fn lock_fd(&self) -> RawFd {
        self._lock.as_raw_fd()
    }

    /// What the previous owner left, if anything readable.
    pub fn load(&self) -> Option<Saved> {
        serde_json::from_slice(&fs::read(&self.path).ok()?).ok()
    }

    /// Replaces the record atomically (a crash leaves the old or the new one).
    pub fn save(&self, saved: &Saved) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        fs::write(&tmp, serde_json::to_vec_pretty(saved)?)?;
        fs::rename(&tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("liveroll-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_record_survives_its_writer() {
        let dir = dir("round-trip");
        let saved = Saved {
            owner_pid: 42,
            children: vec![SavedChild {
                slot: 1,
                port: 9102,
                pid: 77,
                start_ticks: 123,
                id: "sha256:ab".into(),
                generation: 3,
                marker: "f00.3".into(),
                stop: Some("docker rm -f app-9102".into()),
                serving: true,
            }],
            quarantined: Some("v3".into()),
        };
        {
            let file = StateFile::open(&dir, [9101, 9102]).unwrap();
            assert_eq!(file.load(), None, "nothing yet");
            file.save(&saved).unwrap();
        }
        let file = StateFile::open(&dir, [9101, 9102]).unwrap();
        assert_eq!(file.load(), Some(saved));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_second_owner_is_refused_while_the_first_holds_the_lock() {
        let dir = dir("lock");
        let first = StateFile::open(&dir, [9101, 9102]).unwrap();
        let err = StateFile::open(&dir, [9101, 9102]).err().unwrap();
        assert!(
            err.starts_with(&format!(
                "another liveroll (pid {}) uses child ports 9101 and 9102",
                std::process::id()
            )),
            "{err}"
        );
        // Other ports are another record.
        assert!(StateFile::open(&dir, [9201, 9202]).is_ok());
        drop(first);
        assert!(StateFile::open(&dir, [9101, 9102]).is_ok());
        fs::remove_dir_all(dir).unwrap();
    }
}
