//! Upgrading liveroll itself (SIGUSR2, `POST /upgrade`): a new process takes
//! over the listening socket and the running children; the old one drains
//! and exits. Real binaries, real signals, the real demo app.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The liveroll processes an upgrade started (children of nobody the test
/// knows): each is stopped when the test ends, however it ends.
struct Successors {
    pids: Mutex<Vec<i32>>,
}

impl Successors {
    fn new() -> Successors {
        Successors {
            pids: Mutex::new(Vec::new()),
        }
    }

    fn add(&self, pid: i32) {
        self.pids.lock().unwrap().push(pid);
    }
}

impl Drop for Successors {
    fn drop(&mut self) {
        for &pid in self.pids.lock().unwrap().iter().rev() {
            if process_gone(pid) {
                continue;
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while !process_gone(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// The `new_pid=` of the `n`th (1-based) `event=handed_over` in the log.
fn handed_over_to(liveroll: &Liveroll, n: usize) -> i32 {
    let log = liveroll.log();
    let line = log
        .lines()
        .filter(|l| l.contains("event=handed_over"))
        .nth(n - 1)
        .unwrap_or_else(|| panic!("no handover {n} in the log:\n{log}"));
    field(line, "new_pid=").parse().unwrap()
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let at = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        + key.len();
    line[at..].split_whitespace().next().unwrap()
}

/// Sends SIGUSR2 to `pid` and waits for the `n`th handover in the log;
/// returns the new process's pid and the old one's `took_ms`.
fn upgrade(liveroll: &Liveroll, pid: i32, n: usize, successors: &Successors) -> (i32, u64) {
    let failed = liveroll.log().matches("event=upgrade_failed").count();
    kill(Pid::from_raw(pid), Signal::SIGUSR2).unwrap();
    wait_for(&format!("handover {n}"), || {
        let log = liveroll.log();
        if log.matches("event=handed_over").count() >= n {
            return Some(());
        }
        assert_eq!(
            log.matches("event=upgrade_failed").count(),
            failed,
            "the upgrade failed:\n{log}"
        );
        None
    });
    let new = handed_over_to(liveroll, n);
    successors.add(new);
    let log = liveroll.log();
    let line = log
        .lines()
        .filter(|l| l.contains("event=handed_over"))
        .nth(n - 1)
        .unwrap();
    (new, field(line, "took_ms=").parse().unwrap())
}

/// Waits for `needle` to be in the log `count` times, whichever liveroll
/// process writes it (the test's own child may have handed over and exited).
fn wait_log(liveroll: &Liveroll, needle: &str, count: usize) {
    wait_for(&format!("{needle:?} {count} time(s) in the log"), || {
        (liveroll.log().matches(needle).count() >= count).then_some(())
    });
}

/// Waits until `/` answers from a demo other than `pid`; returns its pid.
fn wait_app_change(port: u16, pid: i32) -> i32 {
    wait_for(&format!("a demo other than {pid}"), || {
        request(port, "GET", "/", b"")
            .ok()
            .filter(|r| r.status == 200 && r.demo_pid() != pid)
            .map(|r| r.demo_pid())
    })
}

/// Stops the liveroll process `pid` (not the test's child) with SIGTERM
/// and waits until it is gone.
fn stop(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_for(&format!("liveroll {pid} to exit"), || {
        process_gone(pid).then_some(())
    });
}

/// One client thread's tally.
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    failures: Vec<String>,
    /// The longest time between two answers in a row (or from the start).
    longest_gap: Duration,
}

/// Client loops: keep-alive and new-connection GETs and POSTs (2 KB bodies),
/// each timing the gaps between its answers.
fn client_loops(port: u16, stop: Arc<AtomicBool>) -> Vec<thread::JoinHandle<Tally>> {
    let kinds = [
        ("GET", true),
        ("GET", false),
        ("POST", true),
        ("POST", false),
    ];
    kinds
        .into_iter()
        .map(|(method, keep)| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut tally = Tally::default();
                let body = vec![b'x'; 2000];
                let (path, payload) = match method {
                    "POST" => ("/echo", &body[..]),
                    _ => ("/", &b""[..]),
                };
                let mut conn: Option<Conn> = None;
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
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
                                && (method != "POST" || r.body.len() == body.len()) =>
                        {
                            tally.ok += 1;
                            tally.longest_gap = tally.longest_gap.max(last.elapsed());
                            last = Instant::now();
                            if r.header("connection") == Some("close") {
                                conn = None;
                            }
                        }
                        Ok(r) => {
                            tally
                                .failures
                                .push(format!("{method} keep={keep}: HTTP {}", r.status));
                            conn = None;
                        }
                        Err(e) => {
                            tally.failures.push(format!("{method} keep={keep}: {e}"));
                            conn = None;
                        }
                    }
                }
                tally
            })
        })
        .collect()
}

/// Ten upgrades in a row under client loops: no request fails, the app's
/// pid never changes, every old process exits. Prints what it measured.
fn upgrades_under_load(rounds: usize) {
    let scratch = Scratch::new();
    let successors = Successors::new();
    let liveroll = Liveroll::start(&scratch, &["--drain-timeout", "10s"]);
    let app = liveroll.wait_version("v1");
    let stop_clients = Arc::new(AtomicBool::new(false));
    let clients = client_loops(liveroll.ports.proxy, stop_clients.clone());
    let mut pid = liveroll.pid().as_raw();
    let mut took = Vec::new();
    for round in 1..=rounds {
        // Some traffic through this process before it hands over.
        let before = liveroll.log().matches("event=handover_drained").count();
        thread::sleep(Duration::from_millis(100));
        let (new, took_ms) = upgrade(&liveroll, pid, round, &successors);
        took.push(took_ms);
        wait_log(&liveroll, "event=handover_drained", before + 1);
        let old = pid;
        wait_for(&format!("the old liveroll {old} to exit"), || {
            process_gone(old).then_some(())
        });
        pid = new;
        assert_eq!(
            liveroll.get("/").unwrap().demo_pid(),
            app,
            "the app was restarted"
        );
    }
    thread::sleep(Duration::from_millis(200));
    stop_clients.store(true, Ordering::Relaxed);
    let tallies: Vec<Tally> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let ok: usize = tallies.iter().map(|t| t.ok).sum();
    let failures: Vec<&String> = tallies.iter().flat_map(|t| &t.failures).collect();
    let gap = tallies.iter().map(|t| t.longest_gap).max().unwrap();
    took.sort_unstable();
    println!(
        "upgrades={rounds} requests_ok={ok} failed={} longest_client_gap_ms={} signal_to_handover_ms median={} max={}",
        failures.len(),
        gap.as_millis(),
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(demo_pids(&scratch), vec![app], "one app, the same one");
    assert!(
        !liveroll.log().contains("event=spawn slot=2"),
        "no child was started by an upgrade"
    );
    // The last one is a full liveroll: a stop stops the app.
    stop(pid);
    wait_for("the app to stop with the last liveroll", || {
        process_gone(app).then_some(())
    });
}

#[test]
fn ten_upgrades_under_load_lose_no_request_and_keep_the_app() {
    upgrades_under_load(10);
}

/// `cargo test --release --test upgrade -- --ignored --nocapture` for the
/// figures in the README (more rounds with LIVEROLL_UPGRADE_ROUNDS).
#[test]
#[ignore]
fn measure_upgrades() {
    let rounds = std::env::var("LIVEROLL_UPGRADE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    upgrades_under_load(rounds);
}

#[test]
fn an_admin_upgrade_works_like_the_signal_and_the_old_one_stops_answering() {
    let scratch = Scratch::new();
    let successors = Successors::new();
    let (admin_port, admin) = admin_address();
    let liveroll = Liveroll::start(&scratch, &["--admin-listen", &admin]);
    let app = liveroll.wait_version("v1");
    let old = liveroll.pid().as_raw();
    let answer = request(admin_port, "POST", "/upgrade", b"").unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.body.starts_with("upgraded: liveroll pid "),
        "{}",
        answer.body
    );
    let new = handed_over_to(&liveroll, 1);
    successors.add(new);
    // The admin socket was handed over too: the new process answers it.
    let status = wait_for("the new process to answer /status", || {
        let body = request(admin_port, "GET", "/status", b"").ok()?.body;
        let status: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status["pid"].as_i64() == Some(new as i64)).then_some(status)
    });
    assert_eq!(
        status["children"][0]["pid"].as_i64(),
        Some(
            liveroll
                .log_line("event=adopt")
                .split("pid=")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        ),
        "the adopted child is the new process's"
    );
    assert_eq!(
        request(admin_port, "GET", "/ready", b"").unwrap().status,
        200
    );
    wait_for("the old process to exit", || {
        process_gone(old).then_some(())
    });
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), app);
    // A rollover in the new process retires the adopted child.
    let rolled = request(admin_port, "POST", "/rollover", b"").unwrap();
    assert_eq!(rolled.status, 200, "{}", rolled.body);
    let next = wait_app_change(liveroll.ports.proxy, app);
    wait_for("the adopted child to be stopped", || {
        process_gone(app).then_some(())
    });
    assert_eq!(demo_pids(&scratch), vec![next]);
    stop(new);
    assert!(demo_pids(&scratch).is_empty());
}

/// A minimal WebSocket client (masked text frames).
struct WebSocket {
    stream: TcpStream,
}

impl WebSocket {
    fn open(port: u16) -> WebSocket {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
            .write_all(
                b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                  Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            )
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"));
        WebSocket { stream }
    }

    fn echo(&mut self, text: &str) -> std::io::Result<String> {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame)?;
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head)?;
        let mut payload = vec![0u8; (head[1] & 0x7f) as usize];
        self.stream.read_exact(&mut payload)?;
        Ok(String::from_utf8_lossy(&payload).into_owned())
    }
}

#[test]
fn a_websocket_opened_before_an_upgrade_keeps_echoing_until_the_drain_ends() {
    let scratch = Scratch::new();
    let successors = Successors::new();
    let liveroll = Liveroll::start(&scratch, &["--drain-timeout", "3s"]);
    let app = liveroll.wait_version("v1");
    let mut ws = WebSocket::open(liveroll.ports.proxy);
    assert!(ws.echo("before").unwrap().ends_with(": before"));
    let old = liveroll.pid().as_raw();
    let (new, _) = upgrade(&liveroll, old, 1, &successors);
    // The old process still carries it, to the same app.
    assert!(ws.echo("during").unwrap().ends_with(": during"));
    assert!(!process_gone(old), "the old process drains");
    // Meanwhile new connections are the new process's.
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), app);
    wait_log(&liveroll, "event=handover_drained open_connections=1", 1);
    wait_for("the old process to exit", || {
        process_gone(old).then_some(())
    });
    // Its drain is over: the WebSocket went with it.
    assert!(
        ws.echo("after").is_err(),
        "the WebSocket outlived the drain"
    );
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), app);
    stop(new);
}

#[test]
fn an_upgrade_to_a_binary_that_fails_to_start_leaves_the_old_one_serving() {
    let scratch = Scratch::new();
    let successors = Successors::new();
    // A copy of liveroll whose file the test can replace.
    let binary = scratch.path("liveroll");
    std::fs::copy(LIVEROLL, &binary).unwrap();
    let binary = binary.display().to_string();
    let ports = free_ports();
    let args = Liveroll::args(&scratch, &ports, &[]);
    let liveroll = Liveroll::spawn_binary(&binary, &scratch, ports, &args, &[]);
    let app = liveroll.wait_version("v1");
    // What is at the path now exits at once.
    scratch.write("broken", "#!/bin/sh\necho 'broken build' >&2\nexit 3\n");
    install(&scratch.path("broken"), &binary);
    liveroll.signal(Signal::SIGUSR2);
    liveroll.wait_log("event=upgrade_failed", 1);
    let line = liveroll.log_line("event=upgrade_failed");
    assert!(
        line.contains("exited before it was ready: exit status: 3")
            && line.contains("action=keep-serving"),
        "{line}"
    );
    liveroll.assert_running();
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), app);
    // Updates still work in the old process.
    liveroll.signal(Signal::SIGHUP);
    let next = liveroll.wait_pid_change(app);

    // With a working binary back at the path, the upgrade goes through.
    install(std::path::Path::new(LIVEROLL), &binary);
    let (new, _) = upgrade(&liveroll, liveroll.pid().as_raw(), 1, &successors);
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), next);
    stop(new);
}

/// Replaces the file at `to` with a copy of `from` the way an operator
/// would (a new file renamed over the old one: a running binary cannot be
/// written in place).
fn install(from: &std::path::Path, to: &str) {
    let tmp = format!("{to}.new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// liveroll configured by an environment file, as under systemd.
fn start_with_env_file(scratch: &Scratch, ports: Ports, admin: &str) -> Liveroll {
    let args: Vec<String> = Liveroll::args(scratch, &ports, &[])
        .into_iter()
        // These come from the file instead.
        .collect::<Vec<_>>()
        .chunks(2)
        .filter(|pair| {
            !["--interval", "--child-port1", "--child-port2"].contains(&pair[0].as_str())
        })
        .flatten()
        .cloned()
        .collect();
    let env_file = scratch.path("liveroll.env").display().to_string();
    Liveroll::spawn(
        scratch,
        ports,
        &args,
        &[
            ("LIVEROLL_ENV_FILE", &env_file),
            ("LIVEROLL_ADMIN_LISTEN", admin),
        ],
    )
}

fn env_file(scratch: &Scratch, interval: &str, ports: &Ports) {
    scratch.write(
        "liveroll.env",
        &format!(
            "# as conf/liveroll.env\nLIVEROLL_INTERVAL={interval}\nLIVEROLL_CHILD_PORT1={}\nLIVEROLL_CHILD_PORT2={}\n",
            ports.child1, ports.child2
        ),
    );
}

fn configured_interval(admin_port: u16) -> Option<String> {
    let body = request(admin_port, "GET", "/status", b"").ok()?.body;
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    status["config"]["interval"].as_str().map(String::from)
}

#[test]
fn a_config_change_takes_effect_through_an_upgrade_and_child_ports_cannot_change() {
    let scratch = Scratch::new();
    let successors = Successors::new();
    let ports = free_ports();
    let (p1, p2) = (ports.child1, ports.child2);
    let (admin_port, admin) = admin_address();
    env_file(&scratch, "1h", &ports);
    let liveroll = start_with_env_file(&scratch, ports, &admin);
    let app = liveroll.wait_version("v1");
    assert_eq!(configured_interval(admin_port).as_deref(), Some("1h"));

    // Child ports cannot change in place: refused, the old one serves on.
    let moved = Ports {
        proxy: 0,
        child1: free_ports().child1,
        child2: p2,
    };
    env_file(&scratch, "1h", &moved);
    liveroll.signal(Signal::SIGUSR2);
    liveroll.wait_log("event=upgrade_failed", 1);
    let line = liveroll.log_line("event=upgrade_failed");
    assert!(
        line.contains(&format!(
            "--child-port1/--child-port2 cannot change in place (running {p1}/{p2}, new {}/{p2})",
            moved.child1
        )),
        "{line}"
    );
    liveroll.assert_running();
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), app);

    // A new interval takes effect through an upgrade: updates start running
    // every second, in the new process, on the same app.
    env_file(
        &scratch,
        "1s",
        &Ports {
            proxy: 0,
            child1: p1,
            child2: p2,
        },
    );
    let (new, _) = upgrade(&liveroll, liveroll.pid().as_raw(), 1, &successors);
    wait_for("the new interval", || {
        (configured_interval(admin_port).as_deref() == Some("1s")).then_some(())
    });
    let checks = liveroll
        .log()
        .matches("event=update trigger=interval")
        .count();
    wait_log(&liveroll, "event=update trigger=interval", checks + 2);
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), app);
    stop(new);
}

#[test]
fn systemd_hears_mainpid_from_the_old_process_then_ready_from_the_new_one() {
    let scratch = Scratch::new();
    let successors = Successors::new();
    let systemd = FakeSystemd::new(&scratch);
    let liveroll = Liveroll::start_with_env(
        &scratch,
        free_ports(),
        &[],
        &[
            ("NOTIFY_SOCKET", &systemd.path),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    liveroll.wait_version("v1");
    wait_for("READY=1", || {
        systemd
            .messages()
            .iter()
            .any(|m| m.starts_with("READY=1"))
            .then_some(())
    });
    let old = liveroll.pid().as_raw();
    let (new, _) = upgrade(&liveroll, old, 1, &successors);
    let main_pid = format!("MAINPID={new}");
    let messages = wait_for("READY=1 from the new process", || {
        let messages = systemd.messages();
        let at = messages.iter().position(|m| *m == main_pid)?;
        messages[at..]
            .iter()
            .any(|m| m.starts_with("READY=1\nSTATUS=serving id=v1"))
            .then_some(messages)
    });
    let at = messages.iter().position(|m| *m == main_pid).unwrap();
    // Before MAINPID=, the new process said nothing; after it, the old one
    // says nothing (no STOPPING=1: the service did not stop).
    assert_eq!(
        messages.iter().filter(|m| m.starts_with("READY=1")).count(),
        2,
        "{messages:?}"
    );
    assert!(
        !messages[at..].iter().any(|m| m.contains("STOPPING=1")),
        "{messages:?}"
    );
    // The new process feeds the watchdog in its own name.
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    wait_for("watchdog pings from the new process", || {
        (systemd
            .messages()
            .iter()
            .filter(|m| *m == "WATCHDOG=1")
            .count()
            > pings + 2)
            .then_some(())
    });
    wait_for("the old process to exit", || {
        process_gone(old).then_some(())
    });
    // A later stop reaches the new main process, which stops the app.
    stop(new);
    wait_for("STOPPING=1 from the new process", || {
        systemd
            .messages()
            .iter()
            .any(|m| m.starts_with("STOPPING=1"))
            .then_some(())
    });
    assert!(demo_pids(&scratch).is_empty());
}
