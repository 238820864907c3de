//! Test harness: starts the real `liveroll` binary with the real demo app on
//! free loopback ports, talks HTTP to it, and cleans up even when a test fails.
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub mod docker;
pub mod netns;

pub const LIVEROLL: &str = env!("CARGO_BIN_EXE_liveroll");
pub const DEMO: &str = env!("CARGO_BIN_EXE_liveroll-demo");
/// How long a condition may take before the test gives up. Generous: this is
/// a bound against hanging, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `cond` until it returns `Some`, or panics after [`PATIENCE`] with `what`.
pub fn wait_for<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = cond() {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Three distinct ports that were free a moment ago.
pub struct Ports {
    pub proxy: u16,
    pub child1: u16,
    pub child2: u16,
}

/// Ports below the kernel's ephemeral range (32768 and up), so that no
/// outgoing connection of the load tests can sit on a child port; each test
/// thread walks its own part of the range and checks the port is free.
pub fn free_ports() -> Ports {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let take = || loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20000 + ((std::process::id() as usize * 97 + n) % 12000) as u16;
        if port_is_free(port) {
            return port;
        }
    };
    Ports {
        proxy: take(),
        child1: take(),
        child2: take(),
    }
}

/// A free loopback address for `--admin-listen`: its port and `ip:port`.
pub fn admin_address() -> (u16, String) {
    let port = free_ports().proxy;
    (port, format!("127.0.0.1:{port}"))
}

/// One sample of a Prometheus text exposition, read from the admin port.
pub fn metric(admin_port: u16, name: &str) -> Option<f64> {
    let body = request(admin_port, "GET", "/metrics", b"").ok()?.body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A scratch directory holding what the `--id` and `--exec` commands read:
/// `version` (the ID) and `flags` (extra demo flags), plus liveroll's log.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new() -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "liveroll-it-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let scratch = Scratch { dir };
        scratch.set_version("v1");
        scratch.set_flags("");
        scratch
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Atomically replaces a file, so a command never reads half of it.
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.path(&format!("{name}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(tmp, self.path(name)).unwrap();
    }

    pub fn set_version(&self, version: &str) {
        self.write("version", version);
    }

    pub fn set_flags(&self, flags: &str) {
        self.write("flags", flags);
    }

    /// `--id`: prints the version file.
    pub fn id_cmd(&self) -> String {
        format!("cat {}", self.path("version").display())
    }

    /// `--exec`: the demo app with the current version and flags. The shell
    /// stays the parent (no `exec`), so the demo is a grandchild of liveroll,
    /// as a real server under `docker run` or a wrapper script would be.
    pub fn exec_cmd(&self) -> String {
        format!(
            "{DEMO} --port <<PORT>> --healthcheck <<HEALTHCHECK>> --app-version \"$(cat {v})\" --label {label} $(cat {f}); echo demo exited",
            v = self.path("version").display(),
            f = self.path("flags").display(),
            label = self.dir.display(),
        )
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Whatever a failed test left running: every demo carries our label.
        let _ = Command::new("pkill")
            .args([
                "-KILL",
                "-f",
                "--",
                &format!("--label {}", self.dir.display()),
            ])
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub struct Liveroll {
    pub process: std::process::Child,
    pub ports: Ports,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Liveroll {
    /// Starts liveroll on the demo app with a 1-hour interval (tests trigger
    /// updates themselves) unless `extra` says otherwise.
    pub fn start(scratch: &Scratch, extra: &[&str]) -> Liveroll {
        Self::start_on(scratch, free_ports(), extra)
    }

    pub fn start_on(scratch: &Scratch, ports: Ports, extra: &[&str]) -> Liveroll {
        Self::start_with_env(scratch, ports, extra, &[])
    }

    pub fn start_with_env(
        scratch: &Scratch,
        ports: Ports,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Liveroll {
        Self::start_with_exec(scratch, ports, &scratch.exec_cmd(), extra, env)
    }

    /// As [`Liveroll::start_with_env`], with another `--exec` command.
    pub fn start_with_exec(
        scratch: &Scratch,
        ports: Ports,
        exec: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Liveroll {
        let args = Self::args_with_exec(scratch, &ports, exec, extra);
        Self::spawn(scratch, ports, &args, env)
    }

    /// The command line [`start`](Self::start) uses.
    pub fn args(scratch: &Scratch, ports: &Ports, extra: &[&str]) -> Vec<String> {
        Self::args_with_exec(scratch, ports, &scratch.exec_cmd(), extra)
    }

    fn args_with_exec(scratch: &Scratch, ports: &Ports, exec: &str, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--port".into(),
            ports.proxy.to_string(),
            "--child-port1".into(),
            ports.child1.to_string(),
            "--child-port2".into(),
            ports.child2.to_string(),
            "--pull".into(),
            "true".into(),
            "--id".into(),
            scratch.id_cmd(),
            "--exec".into(),
            exec.into(),
            "--interval".into(),
            "1h".into(),
            "--health-timeout".into(),
            "30s".into(),
            "--kill-timeout".into(),
            "5s".into(),
            "--state-dir".into(),
            scratch.dir.display().to_string(),
            // The previous child goes at once unless a test bakes.
            "--bake".into(),
            "0s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    pub fn spawn(
        scratch: &Scratch,
        ports: Ports,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Liveroll {
        Self::spawn_binary(LIVEROLL, scratch, ports, args, env)
    }

    /// Like [`spawn`](Self::spawn), with the liveroll binary at `binary`
    /// (an upgrade runs whatever is at that path then).
    pub fn spawn_binary(
        binary: &str,
        scratch: &Scratch,
        ports: Ports,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Liveroll {
        let log = scratch.path("liveroll.log");
        let out = fs::File::create(&log).unwrap();
        let process = Command::new(binary)
            .args(args)
            .env("RUST_LOG", "debug,pingora_core=info,pingora_proxy=info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self::adopt(process, ports, log)
    }

    /// Takes over a liveroll process started some other way (e.g. under
    /// `prlimit`), logging to `log`, once it listens.
    pub fn adopt(process: std::process::Child, ports: Ports, log: PathBuf) -> Liveroll {
        let liveroll = Liveroll {
            process,
            ports,
            log,
            exited: None,
        };
        // Tests talk to the proxy at once: wait until it listens (or liveroll
        // has exited, which the test then looks at).
        let proxy = liveroll.ports.proxy;
        wait_for("the proxy to listen", || {
            (TcpStream::connect((Ipv4Addr::LOCALHOST, proxy)).is_ok()
                || process_gone(liveroll.process.id() as i32))
            .then_some(())
        });
        liveroll
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.process.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).unwrap();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line containing `needle` (which must be there).
    pub fn log_line(&self, needle: &str) -> String {
        let log = self.log();
        let line = log.lines().find(|l| l.contains(needle));
        line.unwrap_or_else(|| panic!("no {needle:?} in the log:\n{log}"))
            .to_string()
    }

    /// Fails the test at once if liveroll is no longer running.
    pub fn assert_running(&self) {
        assert!(
            !process_gone(self.process.id() as i32),
            "liveroll exited:\n{}",
            self.log()
        );
    }

    /// Waits until `needle` appears in the log `count` times. (The log is
    /// printed when a test fails, by `Drop`.)
    pub fn wait_log(&self, needle: &str, count: usize) {
        wait_for(&format!("{needle:?} {count} time(s) in the log"), || {
            if self.log().matches(needle).count() >= count {
                return Some(());
            }
            self.assert_running();
            None
        });
    }

    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        request(self.ports.proxy, "GET", path, b"")
    }

    /// Waits until `/` is served by `version` and returns the demo's pid.
    pub fn wait_version(&self, version: &str) -> i32 {
        let want = format!("version={version} ");
        wait_for(&format!("{version} to be served"), || {
            self.assert_running();
            self.get("/")
                .ok()
                .filter(|r| r.status == 200 && r.body.starts_with(&want))
                .map(|r| r.demo_pid())
        })
    }

    /// Waits until `/` answers from a demo other than `pid`; returns the new pid.
    pub fn wait_pid_change(&self, pid: i32) -> i32 {
        wait_for(&format!("a demo other than {pid}"), || {
            self.assert_running();
            self.get("/")
                .ok()
                .filter(|r| r.status == 200 && r.demo_pid() != pid)
                .map(|r| r.demo_pid())
        })
    }

    /// Waits for liveroll to exit (bounded by [`PATIENCE`]).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let status = wait_for("liveroll to exit", || self.process.try_wait().unwrap());
        self.exited = Some(status);
        status
    }
}

impl Drop for Liveroll {
    fn drop(&mut self) {
        if self.exited.is_none() && self.process.try_wait().ok().flatten().is_none() {
            let _ = kill(self.pid(), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.process.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- liveroll log ----\n{}", self.log());
        }
    }
}

pub use liveroll::process::procfs::process_gone;

/// Live processes whose command line starts with `prefix`.
pub fn pids_starting_with(prefix: &str) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .starts_with(prefix)
                && !process_gone(pid)
        })
        .collect()
}

/// The pids of the live demo processes started for this scratch directory.
pub fn demo_pids(scratch: &Scratch) -> Vec<i32> {
    let label = format!("--label {} ", scratch.dir.display());
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with(DEMO) && cmdline.contains(&label) && !process_gone(pid) {
            pids.push(pid);
        }
    }
    pids
}

pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The demo's pid, from its `X-Demo-Pid` header.
    pub fn demo_pid(&self) -> i32 {
        self.header("x-demo-pid")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }
}

/// One request on a new connection.
pub fn request(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<Response> {
    Conn::open(port)?.send(method, path, body, true)
}

/// A client connection that can be kept alive across requests.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn open(port: u16) -> std::io::Result<Conn> {
        let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
        close: bool,
    ) -> std::io::Result<Response> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        self.stream.write_all(head.as_bytes())?;
        self.stream.write_all(body)?;
        self.read_response(method == "HEAD")
    }

    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Waits up to `within` for the server to close the connection; returns
    /// everything it sent meanwhile (unread bytes included), or `None` if the
    /// connection is still open. A reset counts as closed.
    pub fn read_until_closed(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Some(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                Err(_) => return Some(std::mem::take(&mut self.buf)),
            }
        }
    }

    pub fn read_response(&mut self, head_only: bool) -> std::io::Result<Response> {
        let (status, headers, head_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            match parsed.parse(&self.buf).map_err(std::io::Error::other)? {
                httparse::Status::Complete(len) => {
                    let headers: Vec<(String, String)> = parsed
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    break (parsed.code.unwrap(), headers, len);
                }
                httparse::Status::Partial => self.fill()?,
            }
        };
        self.buf.drain(..head_len);
        let mut response = Response {
            status,
            headers,
            body: String::new(),
        };
        let body = if head_only || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = response
            .header("content-length")
            .and_then(|l| l.parse().ok())
        {
            self.take(len)?
        } else if response
            .header("transfer-encoding")
            .is_some_and(|t| t.contains("chunked"))
        {
            self.take_chunked()?
        } else {
            while self.fill().is_ok() {}
            std::mem::take(&mut self.buf)
        };
        response.body = String::from_utf8_lossy(&body).into_owned();
        Ok(response)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk)? {
            0 => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            )),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }

    fn take(&mut self, len: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < len {
            self.fill()?;
        }
        Ok(self.buf.drain(..len).collect())
    }

    fn take_line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            self.fill()?;
        }
    }

    fn take_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.take_line()?;
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .map_err(std::io::Error::other)?;
            if size == 0 {
                while !self.take_line()?.is_empty() {}
                return Ok(body);
            }
            body.extend(self.take(size)?);
            self.take_line()?;
        }
    }
}

/// Reads a file the way a test wants it: trimmed, or empty if missing.
pub fn read_trimmed(path: &Path) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Load from several client threads: keep-alive GETs, a GET per new
/// connection, and POSTs with a body. Returns failures by kind.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    threads: Vec<thread::JoinHandle<Vec<String>>>,
}

impl Load {
    /// `kinds`: any of "keep-alive GET", "new-connection GET", "POST"
    /// (2 KB bodies on a kept-alive connection), "slow GET" (200 ms each).
    pub fn start(port: u16, kinds: &[&'static str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let threads = kinds
            .iter()
            .map(|&kind| {
                let (stop, ok) = (stop.clone(), ok.clone());
                thread::spawn(move || {
                    let mut failures = Vec::new();
                    let mut conn: Option<Conn> = None;
                    let body = vec![b'x'; 2000];
                    while !stop.load(Ordering::Relaxed) {
                        let (method, path, payload, keep) = match kind {
                            "keep-alive GET" => ("GET", "/", &b""[..], true),
                            "new-connection GET" => ("GET", "/", &b""[..], false),
                            "slow GET" => ("GET", "/slow?ms=200", &b""[..], false),
                            "POST" => ("POST", "/echo", &body[..], true),
                            other => panic!("unknown load kind {other}"),
                        };
                        let result = if keep {
                            let c = match conn.take() {
                                Some(c) => Ok(c),
                                None => Conn::open(port),
                            };
                            c.and_then(|mut c| {
                                let r = c.send(method, path, payload, false);
                                conn = Some(c);
                                r
                            })
                        } else {
                            request(port, method, path, payload)
                        };
                        match result {
                            Ok(r)
                                if r.status == 200
                                    && (kind != "POST" || r.body.len() == body.len()) =>
                            {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if r.header("connection") == Some("close") {
                                    conn = None;
                                }
                            }
                            Ok(r) => {
                                failures.push(format!(
                                    "{kind}: HTTP {} {}",
                                    r.status,
                                    r.body.trim()
                                ));
                                // Like most clients: no reuse after an error answer.
                                conn = None;
                            }
                            Err(e) => {
                                failures.push(format!("{kind}: {e}"));
                                conn = None;
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    /// Waits until `n` more requests have succeeded.
    pub fn wait_progress(&self, n: usize) {
        let target = self.ok.load(Ordering::Relaxed) + n;
        wait_for("the load to make progress", || {
            (self.ok.load(Ordering::Relaxed) >= target).then_some(())
        });
    }

    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Plays systemd's side: a datagram socket for `NOTIFY_SOCKET`, read
/// promptly by a thread as systemd would.
pub struct FakeSystemd {
    pub path: String,
    messages: Arc<Mutex<Vec<String>>>,
}

impl FakeSystemd {
    pub fn new(scratch: &Scratch) -> FakeSystemd {
        let path = scratch.path("notify.sock").display().to_string();
        let socket = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends when the test is over and the socket file is gone with the scratch dir.
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        FakeSystemd { path, messages }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

/// Now, as milliseconds since the Unix epoch.
pub fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// The Unix time in milliseconds of a log line's env_logger timestamp.
pub fn log_ms(line: &str) -> u128 {
    let stamp = line
        .trim_start_matches('[')
        .split_whitespace()
        .next()
        .unwrap();
    let at = humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    at.duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}
