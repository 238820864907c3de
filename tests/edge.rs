//! liveroll at the edge: HTTP/1.1 as nginx and HAProxy speak it, and the
//! limits that keep slow, idle, oversized and malformed clients from hurting
//! everyone else (issue 11). Raw sockets wherever framing matters.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Sends `bytes` on a new connection and reads until the proxy closes it.
fn exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let _ = stream.write_all(bytes);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// 1. Pipelining (RFC 9112 §9.3.2): every request answered, in order.

#[test]
fn pipelined_requests_in_one_write_are_answered_in_order() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    let mut conn = Conn::open(liveroll.ports.proxy).unwrap();
    conn.write_raw(
        b"GET /slow?ms=50 HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst\
          GET / HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nsecond\
          GET /headers HTTP/1.1\r\nHost: x\r\nX-Last: yes\r\n\r\n",
    )
    .unwrap();
    let bodies: Vec<String> = (0..5)
        .map(|i| {
            let r = conn
                .read_response(false)
                .unwrap_or_else(|e| panic!("response {}: {e}", i + 1));
            assert_eq!(r.status, 200, "response {}: {}", i + 1, r.body);
            r.body
        })
        .collect();
    assert!(bodies[0].starts_with("slow version=v1"), "{bodies:?}");
    assert_eq!(bodies[1], "first");
    assert!(bodies[2].starts_with("version=v1"), "{bodies:?}");
    assert_eq!(bodies[3], "second");
    assert!(bodies[4].contains("X-Last: yes"), "{bodies:?}");
    // And the connection is still good for more.
    let r = conn.send("GET", "/", b"", false).unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn a_request_sent_while_the_first_is_in_flight_is_answered_after_it() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    let mut conn = Conn::open(liveroll.ports.proxy).unwrap();
    conn.write_raw(b"GET /slow?ms=500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(150));
    conn.write_raw(b"GET /?second HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let first = conn.read_response(false).unwrap();
    assert_eq!(first.status, 200, "{}", first.body);
    assert!(first.body.starts_with("slow "), "{}", first.body);
    let second = conn.read_response(false).unwrap();
    assert_eq!(second.status, 200, "{}", second.body);
    assert!(second.body.starts_with("version=v1"), "{}", second.body);
}

// 2. HTTP/1.0 clients never get chunked bodies (RFC 9112 §6.1).

#[test]
fn an_http10_client_gets_a_raw_body_ended_by_close() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    let pid = liveroll.wait_version("v1");
    // The child sends no Content-Length (close-delimited), then a chunked
    // stream: neither may reach an HTTP/1.0 client chunked.
    for (path, want) in [
        (
            "/stream?n=3",
            format!("line 1 pid={pid}\nline 2 pid={pid}\nline 3 pid={pid}\n"),
        ),
        (
            "/events?n=2&interval_ms=10",
            format!("data: event 1 pid={pid}\n\ndata: event 2 pid={pid}\n\n"),
        ),
    ] {
        let answer = text(&exchange(
            liveroll.ports.proxy,
            format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes(),
        ));
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
        let head = head.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        assert!(!head.contains("transfer-encoding"), "{path}: {head}");
        assert!(head.contains("connection: close"), "{path}: {head}");
        assert_eq!(body, want, "{path}: the body as sent, ended by the close");
    }
}

// 3. An HTTP/1.0 request without Host reaches the child with one.

#[test]
fn an_http10_request_without_host_reaches_the_child_with_one() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    let answer = text(&exchange(
        liveroll.ports.proxy,
        b"GET /headers HTTP/1.0\r\nUser-Agent: probe\r\n\r\n",
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let want = format!("host: 127.0.0.1:{}", liveroll.ports.proxy);
    assert!(
        answer.to_ascii_lowercase().contains(&want),
        "the child saw no Host {want:?}:\n{answer}"
    );
}

// 4. liveroll answers with its own HTTP version, whatever the child's.

#[test]
fn an_http10_child_is_answered_as_http11() {
    let scratch = Scratch::new();
    scratch.write("index.html", "hello from http.server\n");
    let exec = format!(
        "exec python3 -m http.server <<PORT>> --bind 127.0.0.1 --directory {}",
        scratch.dir.display()
    );
    let liveroll =
        Liveroll::start_with_exec(&scratch, free_ports(), &exec, &["--healthcheck", "/"], &[]);
    wait_for("http.server to be served", || {
        liveroll.get("/index.html").ok().filter(|r| r.status == 200)
    });
    let answer = text(&exchange(
        liveroll.ports.proxy,
        b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "the child's HTTP/1.0 status line passed through:\n{answer}"
    );
    assert!(answer.ends_with("hello from http.server\n"), "{answer}");
    // The client's connection stays usable although the child's does not.
    let mut conn = Conn::open(liveroll.ports.proxy).unwrap();
    for _ in 0..2 {
        let r = conn.send("GET", "/index.html", b"", false).unwrap();
        assert_eq!(r.status, 200);
    }
}

// 5. X-Forwarded-* and Forwarded are trusted only from --trusted-proxies.

const SPOOFED: &str = "GET /headers HTTP/1.1\r\nHost: app.example\r\n\
    X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
    X-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 443\r\n\
    X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6;proto=https\r\n\
    Connection: close\r\n\r\n";

/// The demo's `/headers` lines, lower-cased names.
fn seen_headers(answer: &str) -> Vec<(String, String)> {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect()
}

fn seen<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn forwarded_headers_from_an_untrusted_client_are_replaced() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    let answer = text(&exchange(liveroll.ports.proxy, SPOOFED.as_bytes()));
    let h = seen_headers(&answer);
    assert_eq!(seen(&h, "x-forwarded-for"), ["127.0.0.1"], "{answer}");
    assert_eq!(seen(&h, "x-forwarded-proto"), ["http"], "{answer}");
    assert_eq!(seen(&h, "x-forwarded-host"), ["app.example"], "{answer}");
    for gone in ["x-forwarded-port", "x-real-ip", "forwarded"] {
        assert!(seen(&h, gone).is_empty(), "{gone} kept:\n{answer}");
    }
}

#[test]
fn forwarded_headers_from_a_trusted_proxy_are_kept() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &["--trusted-proxies", "10.0.0.0/8,127.0.0.1/32"]);
    liveroll.wait_version("v1");
    let answer = text(&exchange(liveroll.ports.proxy, SPOOFED.as_bytes()));
    let h = seen_headers(&answer);
    assert_eq!(
        seen(&h, "x-forwarded-for"),
        ["6.6.6.6, 127.0.0.1"],
        "{answer}"
    );
    assert_eq!(seen(&h, "x-forwarded-proto"), ["https"], "{answer}");
    assert_eq!(seen(&h, "x-forwarded-host"), ["evil.example"], "{answer}");
    assert_eq!(
        seen(&h, "forwarded"),
        ["for=6.6.6.6;proto=https"],
        "{answer}"
    );
    assert_eq!(seen(&h, "x-real-ip"), ["6.6.6.6"], "{answer}");
}

// 6. Oversized request lines and headers: 414 and 431, a body, then close.

#[test]
fn an_oversized_request_line_gets_414_and_oversized_headers_431() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(70_000));
    let big_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..10)
            .map(|i| format!("X-Big-{i}: {}\r\n", "h".repeat(7_000)))
            .collect::<String>()
    );
    for (request, want) in [
        (long_line, "HTTP/1.1 414 URI Too Long"),
        (big_headers, "HTTP/1.1 431 Request Header Fields Too Large"),
    ] {
        let answer = text(&exchange(liveroll.ports.proxy, request.as_bytes()));
        assert!(answer.starts_with(want), "want {want}, got {answer:?}");
        let lower = answer.to_ascii_lowercase();
        assert!(lower.contains("connection: close"), "{answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(!body.is_empty(), "a short body says why: {answer}");
    }
    // Large but allowed: a 40 KB header and a 30 KB request line are served.
    let fine = format!(
        "GET /?{} HTTP/1.1\r\nHost: x\r\nX-Fine: {}\r\nConnection: close\r\n\r\n",
        "q".repeat(30_000),
        "f".repeat(40_000)
    );
    let answer = text(&exchange(liveroll.ports.proxy, fine.as_bytes()));
    assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..80]);
}

// 7. A request header must arrive within --header-timeout, and an idle
//    keep-alive connection is closed after --keepalive-timeout.

#[test]
fn slow_headers_and_idle_keepalive_connections_are_closed() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(
        &scratch,
        &["--header-timeout", "1s", "--keepalive-timeout", "1s"],
    );
    liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;

    // A client that trickles its header a line at a time, never finishing.
    let mut slow = Conn::open(port).unwrap();
    slow.write_raw(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    let trickle = thread::spawn({
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
        move || {
            // A second trickler, on its own socket, to show it is per request.
            for i in 0..30 {
                if stream
                    .write_all(format!("X-{i}: y\r\n").as_bytes())
                    .is_err()
                {
                    return true;
                }
                thread::sleep(Duration::from_millis(200));
            }
            false
        }
    });
    let mut closed = None;
    for i in 0..30 {
        if slow.write_raw(format!("X-{i}: y\r\n").as_bytes()).is_err() {
            closed = Some(Vec::new());
            break;
        }
        if let Some(answer) = slow.read_until_closed(Duration::from_millis(200)) {
            closed = Some(answer);
            break;
        }
    }
    let answer = closed.expect("a trickling header was held for 6 s");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed only after {:?}",
        started.elapsed()
    );
    let answer = text(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(trickle.join().unwrap(), "the other trickler was held too");

    // An idle keep-alive connection is closed after the keep-alive timeout.
    let mut idle = Conn::open(port).unwrap();
    assert_eq!(idle.send("GET", "/", b"", false).unwrap().status, 200);
    let started = Instant::now();
    let answer = idle.read_until_closed(Duration::from_secs(5));
    assert_eq!(answer.as_deref(), Some(&b""[..]), "idle connection kept");
    assert!(started.elapsed() >= Duration::from_millis(900));

    // A connection that sends nothing is closed after the header timeout.
    let mut silent = Conn::open(port).unwrap();
    assert!(silent.read_until_closed(Duration::from_secs(5)).is_some());

    // Ordinary traffic is unaffected.
    assert_eq!(liveroll.get("/").unwrap().status, 200);
}

// 8. File descriptors: the soft limit is raised, connections beyond
//    --max-connections wait in the backlog, and running out is never blamed
//    on the child.

fn soft_nofile(pid: i32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Starts liveroll under `prlimit --nofile=SOFT:HARD` (which execs it:
/// the pid is liveroll's).
fn start_limited(scratch: &Scratch, nofile: &str, extra: &[&str]) -> Liveroll {
    let ports = free_ports();
    let mut args = vec![format!("--nofile={nofile}"), LIVEROLL.to_string()];
    args.extend(Liveroll::args(scratch, &ports, extra));
    Liveroll::spawn_binary("prlimit", scratch, ports, &args, &[])
}

#[test]
fn the_soft_fd_limit_is_raised_for_liveroll_and_restored_for_children() {
    let scratch = Scratch::new();
    let liveroll = start_limited(&scratch, "256:4096", &[]);
    let demo = liveroll.wait_version("v1");
    assert_eq!(soft_nofile(liveroll.pid().as_raw()), 4096);
    assert_eq!(
        soft_nofile(demo),
        256,
        "the child keeps the limit it was given"
    );
}

#[test]
fn connections_beyond_max_connections_wait_in_the_backlog() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &["--max-connections", "2"]);
    liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;
    let mut first = Conn::open(port).unwrap();
    assert_eq!(first.send("GET", "/", b"", false).unwrap().status, 200);
    let mut second = Conn::open(port).unwrap();
    assert_eq!(second.send("GET", "/", b"", false).unwrap().status, 200);
    // The third is accepted by the kernel but not served while two are open.
    let mut third = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        third.read(&mut byte).is_err(),
        "a third connection was served beyond --max-connections 2"
    );
    drop(first);
    third.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut answer = Vec::new();
    third.read_to_end(&mut answer).unwrap();
    assert!(
        text(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        text(&answer)
    );
    assert_eq!(second.send("GET", "/", b"", true).unwrap().status, 200);
}

#[test]
fn running_out_of_descriptors_never_ejects_the_child() {
    let scratch = Scratch::new();
    let (admin_port, admin) = admin_address();
    let liveroll = start_limited(
        &scratch,
        "256:256",
        &[
            "--health-interval",
            "100ms",
            "--unhealthy-threshold",
            "2",
            "--admin-listen",
            &admin,
        ],
    );
    let pid = liveroll.wait_version("v1");
    // More idle connections than the process has descriptors for.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect((Ipv4Addr::LOCALHOST, liveroll.ports.proxy)).ok())
        .collect();
    assert!(idle.len() >= 280, "{} connected", idle.len());
    thread::sleep(Duration::from_secs(2));
    let log = liveroll.log();
    assert!(!log.contains("event=unhealthy"), "{log}");
    let status: serde_json::Value =
        serde_json::from_str(&request(admin_port, "GET", "/status", b"").unwrap().body).unwrap();
    let phase = status["phase"].as_str().unwrap_or_default();
    assert!(phase.starts_with("serving "), "{status}");
    drop(idle);
    let r = wait_for("the proxy to serve again", || {
        liveroll.get("/").ok().filter(|r| r.status == 200)
    });
    assert_eq!(r.demo_pid(), pid, "still the same child");
}

// 9. Strict framing: illegal request targets and ambiguous lengths are
//    refused before the child sees anything.

#[test]
fn illegal_targets_and_ambiguous_lengths_get_400_from_liveroll() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;
    let cases: [(&str, &[u8]); 5] = [
        ("space in target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("NUL in target", b"GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n"),
        (
            "Content-Length: 5, 5",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
        ),
        (
            "Content-Length twice",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        ),
        ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\n\r\n"),
    ];
    for (name, bytes) in cases {
        let answer = text(&exchange(port, bytes));
        assert!(answer.starts_with("HTTP/1.1 400 "), "{name}: {answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("x-demo-pid"),
            "{name}: the child answered:\n{answer}"
        );
        // The same on a kept-alive connection, after a good request.
        let mut conn = Conn::open(port).unwrap();
        assert_eq!(conn.send("GET", "/", b"", false).unwrap().status, 200);
        conn.write_raw(bytes).unwrap();
        let r = conn.read_response(false).unwrap();
        assert_eq!(r.status, 400, "{name} on a reused connection: {}", r.body);
        assert!(r.header("x-demo-pid").is_none(), "{name}: {}", r.body);
    }
    // Pipelined behind a request in flight, a malformed line is refused too,
    // after the first is answered.
    let mut conn = Conn::open(port).unwrap();
    conn.write_raw(b"GET /slow?ms=300 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    thread::sleep(Duration::from_millis(100));
    conn.write_raw(b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(conn.read_response(false).unwrap().status, 200);
    let r = conn.read_response(false).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.header("x-demo-pid").is_none(), "{}", r.body);
}

// 10. An overloaded child (probes time out while it is busy answering) is not
//     replaced.

#[test]
fn an_overloaded_child_is_not_replaced() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(
        &scratch,
        &["--health-interval", "100ms", "--unhealthy-threshold", "2"],
    );
    let pid = liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;
    // Requests in flight the whole time, and others completing.
    let busy: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || request(port, "GET", "/slow?ms=9000", b"")))
        .collect();
    thread::sleep(Duration::from_millis(200));
    let r = request(
        liveroll.ports.child1,
        "POST",
        "/admin/slow-health?ms=3000",
        b"",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let r = liveroll.get("/").unwrap();
        assert_eq!((r.status, r.demo_pid()), (200, pid), "{}", r.body);
        thread::sleep(Duration::from_millis(100));
    }
    for b in busy {
        assert_eq!(b.join().unwrap().unwrap().status, 200);
    }
    let log = liveroll.log();
    assert!(
        !log.contains("trigger=unhealthy"),
        "replaced under load:\n{log}"
    );
    request(
        liveroll.ports.child1,
        "POST",
        "/admin/slow-health?ms=0",
        b"",
    )
    .unwrap();
}

// 11. Log values are quoted; a child port among the ephemeral ports is
//     warned about; --max-body-size refuses larger bodies with 413.

#[test]
fn interpolated_log_values_are_quoted() {
    let scratch = Scratch::new();
    scratch.set_version("v1 event=forged ok=1");
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1 event=forged ok=1");
    let line = liveroll.log_line("event=rolled");
    assert!(
        line.contains(r#"id="v1 event=forged ok=1""#),
        "unquoted: {line}"
    );
    let rest = line.replacen(r#""v1 event=forged ok=1""#, "", 1);
    assert_eq!(rest.matches("event=").count(), 1, "{line}");
}

#[test]
fn a_child_port_in_the_ephemeral_range_is_warned_about() {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap();
    let lo: u16 = range.split_whitespace().next().unwrap().parse().unwrap();
    let port = (lo + 1000..lo + 5000)
        .find(|&p| port_is_free(p))
        .unwrap()
        .to_string();
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &["--child-port2", &port]);
    liveroll.wait_version("v1");
    let line = liveroll.log_line("key=child-port2");
    assert!(line.contains("ephemeral"), "{line}");
    assert!(!liveroll.log().contains("key=child-port1"));
}

#[test]
fn max_body_size_refuses_larger_bodies_with_413() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &["--max-body-size", "1k"]);
    liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;
    let r = request(port, "POST", "/echo", &[b'a'; 1024]).unwrap();
    assert_eq!((r.status, r.body.len()), (200, 1024));
    let r = request(port, "POST", "/echo", &[b'a'; 1025]).unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.header("x-demo-pid").is_none());
    // A chunked body is counted as it arrives.
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for _ in 0..3 {
        let _ = stream.write_all(format!("200\r\n{}\r\n", "b".repeat(512)).as_bytes());
    }
    let _ = stream.write_all(b"0\r\n\r\n");
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        text(&answer).starts_with("HTTP/1.1 413"),
        "{}",
        text(&answer)
    );
}
