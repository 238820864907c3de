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

use super::reaper;

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
/// (`LIVEROLL_UPGRADE` is removed at startup, but a child must never see
/// it even so: it names descriptors that are not the child's.)
const PRIVATE_ENV: [&str; 4] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    crate::handover::ENV_VAR,
];

/// `sh -c cmd` in a process group of its own, with no stdin, without
/// liveroll's systemd variables, and with the descriptor limit liveroll was
/// given (it raises its own).
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
    // SAFETY: runs between fork and exec; it only calls getrlimit(2) and
    // setrlimit(2), which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(super::limits::restore_for_child);
    }
    command
}

/// Kills a command's process group if it is dropped before it finished
/// (timeout, or the update abandoned at shutdown).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0.take() {
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
    let mut child = reaper::spawn(
        shell(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // If this future is dropped, the guard kills the group and tokio
            // reaps the shell.
            .kill_on_drop(true),
    )
    .map_err(CommandError::Spawn)?;
    let pid = child.id().map(|pid| pid as i32);
    let mut guard = GroupGuard(pid.map(Pid::from_raw));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");

    let finished = async {
        tokio::join!(
            read_capped(stdout, stdout_limit + 1, false),
            read_capped(stderr, STDERR_TAIL_BYTES, true),
            child.wait()
        )
    };
    let outcome = tokio::time::timeout(timeout, finished).await;
    // Done or timed out: anything left in its group goes now.
    if let Some(pgid) = guard.0.take() {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    let waited = match &outcome {
        Ok((_, _, status)) => status.is_ok(),
        // Killed above: the shell's status follows at once.
        Err(_) => child.wait().await.is_ok(),
    };
    if let (true, Some(pid)) = (waited, pid) {
        reaper::waited(pid);
    }
    let (out, err, status) = outcome.map_err(|_| CommandError::TimedOut(timeout))?;
    let status = status.map_err(CommandError::Spawn)?;
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

/// The first character of `id` that a shell would read as more than a
/// plain word (space, quote, `$`, `;`, ...), if any: such an ID is never
/// put into a command line with `<<ID>>`.
pub fn unsafe_in_shell(id: &str) -> Option<char> {
    id.chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "._:@/+=-,%".contains(c)))
}

/// Expands an `--exec` or `--stop` template for one child: `<<PORT>>`,
/// `<<HEALTHCHECK>>` and `<<ID>>` (the ID `--id` printed, so the child can
/// be pinned to exactly that artifact).
pub fn expand(template: &str, port: u16, healthcheck: &str, id: &str) -> String {
    template
        .replace("<<PORT>>", &port.to_string())
        .replace("<<HEALTHCHECK>>", healthcheck)
        .replace("<<ID>>", id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(30);

    #[test]
    fn expand_replaces_every_placeholder() {
        assert_eq!(
            expand(
                "app -p <<PORT>> --check <<HEALTHCHECK>> --again <<PORT>> <<ID>>",
                9101,
                "/healthz",
                "sha256:ab"
            ),
            "app -p 9101 --check /healthz --again 9101 sha256:ab"
        );
        assert_eq!(expand("no placeholders", 1, "/h", "x"), "no placeholders");
        assert_eq!(expand("<<port>> <<PORT", 1, "/h", "x"), "<<port>> <<PORT");
    }

    #[test]
    fn only_plain_ids_are_put_into_commands() {
        assert_eq!(unsafe_in_shell("sha256:0123abcdef"), None);
        assert_eq!(unsafe_in_shell("registry.example/app@sha256:ab"), None);
        assert_eq!(unsafe_in_shell("v1.2.3-rc.1+build=7"), None);
        for (id, bad) in [
            ("v 1", ' '),
            ("x;rm", ';'),
            ("$(id)", '$'),
            ("a'b", '\''),
            ("`x`", '`'),
        ] {
            assert_eq!(unsafe_in_shell(id), Some(bad), "{id}");
        }
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
