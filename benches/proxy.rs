//! End-to-end cost of going through liveroll: keep-alive `GET /` requests on
//! one persistent connection, sent straight to the demo app ("direct") and
//! through the real liveroll binary in front of another instance of it
//! ("liveroll").
//!
//! Both servers run as separate processes on loopback, on free ports:
//! - a demo app started here (`liveroll-demo --port P`), the direct target;
//! - liveroll (`--pull true --id 'echo bench' --interval 1h`), which starts
//!   its own demo child on its first child port.
//!
//! The criterion group times one request per iteration on each target. After
//! it, two plain timed loops (20 000 requests per target and round,
//! interleaved over 3 rounds) give the proxied/direct ratio of the mean time
//! per request, printed on stderr. Everything started here is stopped by
//! Drop guards, also when a panic unwinds.
//!
//! Run: `cargo bench --bench proxy`. Under `cargo test --benches` (criterion's
//! test mode) the ratio loop only runs a few hundred requests.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const DEMO: &str = env!("CARGO_BIN_EXE_liveroll-demo");
const LIVEROLL: &str = env!("CARGO_BIN_EXE_liveroll");

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: liveroll-bench\r\n\r\n";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const RATIO_REQUESTS: u32 = 20_000;
const RATIO_ROUNDS: u32 = 3;

/// A process started by the bench: SIGTERM on drop, SIGKILL if it lingers.
/// `also_kill` are pids it started itself (liveroll's demo child), killed
/// too if the process had to be SIGKILLed and could not stop them.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    also_kill: Vec<i32>,
    grace: Duration,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, grace: Duration) -> Proc {
        let log =
            std::env::temp_dir().join(format!("liveroll-bench-{name}-{}.log", std::process::id()));
        let file = File::create(&log).expect("create the bench log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone the log file"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name,
            child,
            log,
            also_kill: Vec::new(),
            grace,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + self.grace;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                eprintln!(
                    "{} did not stop within {:?}; killing it",
                    self.name, self.grace
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
                for &extra in &self.also_kill {
                    let _ = kill(Pid::from_raw(extra), Signal::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `n` distinct free loopback ports (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// A minimal blocking HTTP/1.1 client on one persistent connection.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    filled: usize,
}

impl Client {
    fn connect(port: u16) -> io::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Client {
            stream,
            buf: vec![0; 16 * 1024],
            filled: 0,
        })
    }

    /// One `GET /`; returns the status code.
    fn get(&mut self) -> io::Result<u16> {
        self.request(false).map(|(status, _)| status)
    }

    /// One `GET /`; returns the status and the `X-Demo-Pid` header.
    fn get_pid(&mut self) -> io::Result<(u16, Option<i32>)> {
        self.request(true)
    }

    fn request(&mut self, want_pid: bool) -> io::Result<(u16, Option<i32>)> {
        self.stream.write_all(REQUEST)?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf[..self.filled]) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut length = None;
                    let mut pid = None;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if want_pid && h.name.eq_ignore_ascii_case("x-demo-pid") {
                            pid = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok());
                        }
                    }
                    let length = length.ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "no Content-Length")
                    })?;
                    let total = head_len + length;
                    if total > self.buf.len() {
                        self.buf.resize(total, 0);
                    }
                    while self.filled < total {
                        self.fill()?;
                    }
                    self.buf.copy_within(total..self.filled, 0);
                    self.filled -= total;
                    return Ok((status, pid));
                }
                Ok(httparse::Status::Partial) => {
                    if self.filled == self.buf.len() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "response head too large",
                        ));
                    }
                    self.fill()?;
                }
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        match self.stream.read(&mut self.buf[self.filled..])? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            )),
            n => {
                self.filled += n;
                Ok(())
            }
        }
    }
}

/// Polls `GET /` on a fresh connection until it answers 200; returns the
/// demo pid that answered.
fn wait_ready(proc: &mut Proc, port: u16) -> Option<i32> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "{} exited early ({status}):\n{}",
                proc.name,
                proc.log_text()
            );
        }
        match Client::connect(port).and_then(|mut c| c.get_pid()) {
            Ok((200, pid)) => return pid,
            Ok((status, _)) => last = format!("HTTP {status}"),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{} did not answer 200 on port {port} within {READY_TIMEOUT:?} (last: {last}):\n{}",
        proc.name,
        proc.log_text()
    );
}

fn timed_loop(client: &mut Client, n: u32) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        let status = client.get().expect("request failed");
        assert_eq!(status, 200);
    }
    start.elapsed()
}

fn proxy(c: &mut Criterion) {
    let ports = free_ports(4);
    let (direct_port, proxy_port, child_port1, child_port2) =
        (ports[0], ports[1], ports[2], ports[3]);

    // Guards first, so they drop after the clients.
    let mut direct = Proc::spawn(
        "direct demo",
        Command::new(DEMO).args(["--port", &direct_port.to_string()]),
        Duration::from_secs(10),
    );
    let mut liveroll = Proc::spawn(
        "liveroll",
        Command::new(LIVEROLL)
            .args(["--bind", "127.0.0.1"])
            .args(["--port", &proxy_port.to_string()])
            .args(["--child-port1", &child_port1.to_string()])
            .args(["--child-port2", &child_port2.to_string()])
            .args(["--pull", "true", "--id", "echo bench"])
            .args(["--exec", &format!("'{DEMO}' --port <<PORT>>")])
            .args(["--interval", "1h"])
            .env("RUST_LOG", "warn"),
        // Drain (default 30 s) never waits here: the clients are gone first.
        Duration::from_secs(45),
    );
    wait_ready(&mut direct, direct_port);
    if let Some(pid) = wait_ready(&mut liveroll, proxy_port) {
        liveroll.also_kill.push(pid);
    }

    let mut direct_client = Client::connect(direct_port).expect("connect to the demo");
    let mut proxied_client = Client::connect(proxy_port).expect("connect to liveroll");

    let mut group = c.benchmark_group("keepalive_get");
    group.throughput(Throughput::Elements(1));
    group.bench_function("direct", |b| {
        b.iter(|| assert_eq!(direct_client.get().expect("direct request"), 200))
    });
    group.bench_function("liveroll", |b| {
        b.iter(|| assert_eq!(proxied_client.get().expect("proxied request"), 200))
    });
    group.finish();

    // criterion's test mode (`cargo test --benches`) has no `--bench` flag.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let (requests, rounds) = if benchmarking {
        (RATIO_REQUESTS, RATIO_ROUNDS)
    } else {
        (200, 1)
    };
    let (mut direct_time, mut proxied_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        direct_time += timed_loop(&mut direct_client, requests);
        proxied_time += timed_loop(&mut proxied_client, requests);
    }
    let total = f64::from(requests * rounds);
    let direct_us = direct_time.as_secs_f64() * 1e6 / total;
    let proxied_us = proxied_time.as_secs_f64() * 1e6 / total;
    eprintln!(
        "proxy/direct time ratio: {:.2}x (direct {direct_us:.1} us/req, proxied {proxied_us:.1} us/req; \
         {requests} requests x {rounds} rounds each, interleaved)",
        proxied_us / direct_us
    );

    drop(direct_client);
    drop(proxied_client);
    drop(liveroll);
    drop(direct);
}

criterion_group!(benches, proxy);
criterion_main!(benches);
