//! Running the operator's `--pull` and `--id` commands, and expanding `--exec`.
//!
//! Each command runs as `sh -c` in its own process group, so a timeout (or
//! liveroll shutting down) kills everything it started, not only the shell.

use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Most bytes of an ID we accept; anything longer is not a version string.
pub const MAX_ID_BYTES: usize = 4096;
/// How much of a failed command's stderr goes into the error.
const STDERR_TAIL_BYTES: usize = 2048;

#[derive(Debug)]
pub enum CommandError {
    Spawn(std::io::Error),
    Failed { status: ExitStatus, stderr: String },
    TimedOut(Duration),
    BadId(String),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Spawn(e) => write!(f, "could not start sh: {e}"),
            CommandError::Failed { status, stderr } if stderr.is_empty() => write!(f, "{status}"),
            CommandError::Failed { status, stderr } => write!(f, "{status}, stderr: {stderr}"),
            CommandError::TimedOut(t) => {
                write!(
                    f,
                    "timed out after {}, process group killed",
                    humantime::format_duration(*t)
                )
            }
            CommandError::BadId(why) => write!(f, "{why}"),
        }
    }
}

/// systemd's variables for liveroll itself: a command or child must never
/// talk to systemd in liveroll's name.
const PRIVATE_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// `sh -c cmd` in a process group of its own, with no stdin and without
/// liveroll's systemd variables.
pub fn shell(cmd: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .process_group(0)
        .stdin(Stdio::null());
    for var in PRIVATE_ENV {
        command.env_remove(var);
    }
    command
}

/// Kills a command's process group if it is dropped before it finished
/// (timeout, or the update abandoned at shutdown).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

/// Runs `cmd` with `sh -c`; returns its stdout if it exits 0 within
/// `timeout`. Only the first `stdout_limit + 1` bytes are kept, enough for
/// the caller to tell that there was more.
pub async fn run(
    cmd: &str,
    timeout: Duration,
    stdout_limit: usize,
) -> Result<Vec<u8>, CommandError> {
    let mut child = shell(cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The guard below kills the group; this makes tokio reap the shell.
        .kill_on_drop(true)
        .spawn()
        .map_err(CommandError::Spawn)?;
    let mut guard = GroupGuard(child.id().map(|pid| Pid::from_raw(pid as i32)));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");

    let finished = async {
        let (out, err, status) = tokio::join!(
            read_capped(stdout, stdout_limit + 1, false),
            read_capped(stderr, STDERR_TAIL_BYTES, true),
            child.wait()
        );
        (out, err, status)
    };
    let (out, err, status) = tokio::time::timeout(timeout, finished)
        .await
        .map_err(|_| CommandError::TimedOut(timeout))?;
    let status = status.map_err(CommandError::Spawn)?;
    // The shell exited; anything it left behind in its group goes too.
    if let Some(pgid) = guard.0.take() {
        let _ = killpg(pgid, Signal::SIGKILL);
    }

    if !status.success() {
        let stderr = String::from_utf8_lossy(&err).trim().replace('\n', " | ");
        return Err(CommandError::Failed { status, stderr });
    }
    Ok(out)
}

/// Reads a stream to its end, keeping its first (or, with `tail`, last)
/// `limit` bytes; reading on keeps the child from blocking on a full pipe.
async fn read_capped(mut stream: impl AsyncRead + Unpin, limit: usize, tail: bool) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > limit {
            if tail {
                kept.drain(..kept.len() - limit);
            } else {
                kept.truncate(limit);
            }
        }
    }
    kept
}

/// Turns `--id` output into an ID: trimmed, non-empty, printable UTF-8.
pub fn parse_id(out: &[u8]) -> Result<String, CommandError> {
    if out.len() > MAX_ID_BYTES {
        return Err(CommandError::BadId(format!(
            "printed more than {MAX_ID_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(out)
        .map_err(|_| CommandError::BadId("printed bytes that are not UTF-8".into()))?;
    let id = text.trim();
    if id.is_empty() {
        return Err(CommandError::BadId("printed an empty ID".into()));
    }
    if id.chars().any(char::is_control) {
        return Err(CommandError::BadId(
            "printed more than one line or control characters".into(),
        ));
    }
    Ok(id.to_string())
}

/// Expands the `--exec` template for one child.
pub fn expand(template: &str, port: u16, healthcheck: &str) -> String {
    template
        .replace("<<PORT>>", &port.to_string())
        .replace("<<HEALTHCHECK>>", healthcheck)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn expand_replaces_every_placeholder() {
        assert_eq!(
            expand(
                "app -p <<PORT>> --check <<HEALTHCHECK>> --again <<PORT>>",
                9101,
                "/healthz"
            ),
            "app -p 9101 --check /healthz --again 9101"
        );
        assert_eq!(expand("no placeholders", 1, "/h"), "no placeholders");
        assert_eq!(expand("<<port>> <<PORT", 1, "/h"), "<<port>> <<PORT");
    }

    #[test]
    fn ids_are_trimmed_and_checked() {
        assert_eq!(parse_id(b"  sha256:abc\n").unwrap(), "sha256:abc");
        assert_eq!(parse_id(b"v 1.2").unwrap(), "v 1.2");
        for bad in [&b""[..], b" \n\t", b"a\nb", b"\xff\xfe", b"a\x00b"] {
            assert!(parse_id(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn run_returns_stdout() {
        assert_eq!(run("echo hello", T, 100).await.unwrap(), b"hello\n");
    }

    #[tokio::test]
    async fn run_reports_exit_status_and_stderr() {
        let err = run("echo boom >&2; exit 3", T, 100).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("exit status: 3") && text.contains("boom"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn run_keeps_only_what_the_caller_can_use() {
        let out = run("head -c 5000000 /dev/zero", T, 4096).await.unwrap();
        assert_eq!(out.len(), 4097);
        let err = parse_id(&out).unwrap_err();
        assert!(err.to_string().contains("more than 4096 bytes"), "{err}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("liveroll-cmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("pid");
        // The sleep runs in the background of the shell: only a group kill reaches it.
        let cmd = format!("sleep 1000 & echo $! > {}; wait", pidfile.display());
        let err = run(&cmd, Duration::from_millis(500), 100)
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::TimedOut(_)), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            crate::process::procfs::process_gone(pid)
        });
        assert!(gone, "background sleep {pid} survived the timeout");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
