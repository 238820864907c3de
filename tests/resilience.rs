//! No request lost: requests wait for a child instead of failing, failed
//! requests are retried where that is safe, unhealthy children are replaced,
//! and long-lived connections survive a rollover until the drain timeout.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::thread;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn requests_at_startup_wait_for_the_first_child() {
    let scratch = Scratch::new();
    scratch.set_flags("--start-delay 2s");
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_log("event=spawn", 1);
    wait_for("the proxy to listen", || {
        TcpStream::connect((Ipv4Addr::LOCALHOST, liveroll.ports.proxy)).ok()
    });
    assert!(
        !liveroll.log().contains("event=publish"),
        "the request must be sent before the child is healthy"
    );
    let r = liveroll.get("/").unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.starts_with("version=v1 "));
}

#[test]
fn past_the_hold_timeout_the_answer_is_503_with_retry_after() {
    let scratch = Scratch::new();
    scratch.set_flags("--unhealthy");
    let liveroll = Liveroll::start(&scratch, &["--hold-timeout", "300ms"]);
    let r = liveroll.get("/").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("1"));
}

#[test]
fn past_max_held_requests_get_503_at_once() {
    let scratch = Scratch::new();
    scratch.set_flags("--unhealthy");
    // With a one-hour hold, only the limit can make this answer come back.
    let liveroll = Liveroll::start(&scratch, &["--hold-timeout", "1h", "--max-held", "0"]);
    let r = liveroll.get("/").unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
}

#[test]
fn sigkill_of_the_only_child_under_load_loses_no_request() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    let mut pid = liveroll.wait_version("v1");
    let load = Load::start(
        liveroll.ports.proxy,
        &["keep-alive GET", "new-connection GET", "POST", "slow GET"],
    );
    for _ in 0..3 {
        load.wait_progress(30);
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        pid = liveroll.wait_pid_change(pid);
    }
    load.wait_progress(30);
    let (ok, failures) = load.finish();
    eprintln!(
        "sigkill of the only child x3: {ok} requests, {} failed: {failures:?}",
        failures.len()
    );
    let lost: Vec<_> = failures.iter().filter(|f| !f.starts_with("POST")).collect();
    assert!(lost.is_empty(), "{lost:?}");
    // A POST the child had already received when it died cannot be resent
    // safely; at most one per kill may fail, never more.
    assert!(failures.len() <= 3, "{failures:?}");
    assert!(ok >= 120, "the load ran");
}

#[test]
fn sigkill_of_a_draining_child_retries_its_idempotent_requests() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    let old = liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;
    let slow: Vec<_> = (0..4)
        .map(|_| thread::spawn(move || request(port, "GET", "/slow?ms=5000", b"")))
        .collect();
    liveroll.wait_log("slow request started", 4);
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_log("event=drain", 1);
    // Two children now: the new one serving, the old one draining four requests.
    assert!(liveroll.log().contains("inflight=4"), "{}", liveroll.log());
    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();
    for request in slow {
        let r = request.join().unwrap().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert_ne!(r.demo_pid(), old, "retried on the new child");
    }
}

#[test]
fn a_child_failing_health_checks_is_replaced() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(
        &scratch,
        &["--health-interval", "50ms", "--unhealthy-threshold", "3"],
    );
    let old = liveroll.wait_version("v1");
    let child_port = liveroll.ports.child1;
    assert_eq!(
        request(child_port, "POST", "/admin/fail-health", b"")
            .unwrap()
            .status,
        200
    );
    liveroll.wait_log("event=unhealthy", 1);
    let new = liveroll.wait_pid_change(old);
    liveroll.wait_log("event=rolled trigger=unhealthy", 1);
    wait_for("the unhealthy child to be stopped", || {
        process_gone(old).then_some(())
    });
    assert_ne!(new, old);
}

#[test]
fn an_ejected_child_that_recovers_serves_again() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(
        &scratch,
        &[
            "--health-interval",
            "50ms",
            "--health-timeout",
            "300ms",
            "--hold-timeout",
            "100ms",
        ],
    );
    let old = liveroll.wait_version("v1");
    // Its replacement will never be healthy, so the old child stays.
    scratch.set_flags("--unhealthy");
    request(liveroll.ports.child1, "POST", "/admin/fail-health", b"").unwrap();
    liveroll.wait_log("event=update_failed trigger=unhealthy step=health", 1);
    assert_eq!(
        liveroll.get("/").unwrap().status,
        503,
        "ejected: not served"
    );
    request(liveroll.ports.child1, "POST", "/admin/pass-health", b"").unwrap();
    liveroll.wait_log("event=recovered", 1);
    let r = liveroll.get("/").unwrap();
    assert_eq!((r.status, r.demo_pid()), (200, old));
}

#[test]
fn a_websocket_keeps_its_child_until_it_closes() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    let old = liveroll.wait_version("v1");
    let mut ws = WebSocket::open(liveroll.ports.proxy);
    assert_eq!(ws.echo("hello"), format!("pid={old}: hello"));
    liveroll.signal(Signal::SIGHUP);
    let new = liveroll.wait_pid_change(old);
    liveroll.wait_log("event=drain", 1);
    // The old child keeps the WebSocket while new requests go to the new one.
    assert_eq!(ws.echo("still there"), format!("pid={old}: still there"));
    assert!(!process_gone(old));
    ws.close();
    wait_for("the old child to be stopped once the socket closed", || {
        process_gone(old).then_some(())
    });
    assert!(
        !liveroll.log().contains("event=drain_timeout"),
        "{}",
        liveroll.log()
    );
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), new);
}

#[test]
fn a_stream_runs_until_the_drain_timeout_then_ends_cleanly() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &["--drain-timeout", "1s"]);
    let old = liveroll.wait_version("v1");
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, liveroll.ports.proxy)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // The second event is an hour away: seeing the first proves nothing is buffered.
    stream
        .write_all(b"GET /events?n=2&interval_ms=3600000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("data: event 1") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_pid_change(old);
    liveroll.wait_log("event=drain_timeout", 1);
    // After the drain timeout the child is told to stop and ends the stream
    // with its last chunk (the client connection itself may stay open).
    while !seen.ends_with("0\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed without the last chunk: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(!seen.contains("data: event 2"), "{seen}");
    wait_for("the old child to exit", || process_gone(old).then_some(()));
}

/// A minimal WebSocket client (masked frames, text only).
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
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        WebSocket { stream }
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).unwrap();
    }

    fn receive(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        self.stream.read_exact(&mut head).unwrap();
        let mut payload = vec![0u8; (head[1] & 0x7f) as usize];
        self.stream.read_exact(&mut payload).unwrap();
        (head[0] & 0x0f, payload)
    }

    fn echo(&mut self, text: &str) -> String {
        self.send(1, text.as_bytes());
        let (opcode, payload) = self.receive();
        assert_eq!(opcode, 1);
        String::from_utf8(payload).unwrap()
    }

    fn close(mut self) {
        self.send(8, b"");
        assert_eq!(self.receive().0, 8, "close acknowledged");
    }
}
