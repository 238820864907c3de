//! SIGTERM, SIGINT and SIGQUIT: in-flight requests finish, every child's
//! process group is stopped, nothing keeps a port, exit status 0.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::thread;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn stop_signals_leave_no_process_and_no_port_behind() {
    for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT] {
        let scratch = Scratch::new();
        let mut liveroll = Liveroll::start(&scratch, &[]);
        let pid = liveroll.wait_version("v1");
        let (proxy, child) = (liveroll.ports.proxy, liveroll.ports.child1);
        liveroll.signal(signal);
        let status = liveroll.wait_exit();
        assert_eq!(status.code(), Some(0), "{signal}: {}", liveroll.log());
        assert!(process_gone(pid), "{signal}: demo {pid} survived");
        assert!(demo_pids(&scratch).is_empty(), "{signal}");
        assert!(
            port_is_free(proxy) && port_is_free(child),
            "{signal}: a port is still bound"
        );
        assert!(
            liveroll.log().contains("event=stopped"),
            "{signal}: {}",
            liveroll.log()
        );
    }
}

#[test]
fn a_request_in_flight_at_sigterm_completes() {
    let scratch = Scratch::new();
    let mut liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;
    let slow = thread::spawn(move || request(port, "GET", "/slow?ms=1000", b""));
    // Signal once the request has reached the child.
    liveroll.wait_log("slow request started", 1);
    liveroll.signal(Signal::SIGTERM);
    let response = slow.join().unwrap().unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(
        response.body.starts_with("slow version=v1"),
        "{}",
        response.body
    );
    assert_eq!(liveroll.wait_exit().code(), Some(0));
    assert!(demo_pids(&scratch).is_empty());
}

#[test]
fn sigterm_during_a_pending_health_check_stops_at_once() {
    let scratch = Scratch::new();
    // The first child never listens: liveroll is still waiting for its health.
    scratch.set_flags("--start-delay 1h");
    let mut liveroll = Liveroll::start(&scratch, &["--health-timeout", "1h"]);
    liveroll.wait_log("event=spawn", 1);
    wait_for("the demo to be running", || {
        (!demo_pids(&scratch).is_empty()).then_some(())
    });
    liveroll.signal(Signal::SIGTERM);
    assert_eq!(liveroll.wait_exit().code(), Some(0), "{}", liveroll.log());
    assert!(
        demo_pids(&scratch).is_empty(),
        "the starting child was stopped"
    );
    assert!(
        !liveroll.log().contains("event=kill"),
        "SIGTERM was enough: {}",
        liveroll.log()
    );
}

#[test]
fn sigterm_during_a_hung_pull_stops_at_once() {
    let scratch = Scratch::new();
    let hang = scratch.path("hang");
    let pull = format!("if [ -e {} ]; then sleep 1000; fi", hang.display());
    let mut liveroll = Liveroll::start(&scratch, &["--pull", &pull]);
    let pid = liveroll.wait_version("v1");
    scratch.write("hang", "");
    liveroll.signal(Signal::SIGHUP);
    let sleeping = wait_for("the hung pull to be running", || {
        let pids = pids_starting_with("sleep 1000");
        (!pids.is_empty()).then_some(pids)
    });
    liveroll.signal(Signal::SIGTERM);
    assert_eq!(liveroll.wait_exit().code(), Some(0), "{}", liveroll.log());
    assert!(process_gone(pid));
    for sleep in sleeping {
        assert!(process_gone(sleep), "the pull's process group was killed");
    }
}

#[test]
fn a_request_waiting_for_a_child_at_sigterm_gets_503() {
    let scratch = Scratch::new();
    scratch.set_flags("--unhealthy");
    let (admin, admin_addr) = admin_address();
    let mut liveroll = Liveroll::start(
        &scratch,
        &["--hold-timeout", "1h", "--admin-listen", &admin_addr],
    );
    let port = liveroll.ports.proxy;
    let held = thread::spawn(move || request(port, "GET", "/", b""));
    wait_for("the request to be held", || {
        (metric(admin, "liveroll_held_requests") == Some(1.0)).then_some(())
    });
    liveroll.signal(Signal::SIGTERM);
    let r = held.join().unwrap().unwrap();
    assert_eq!(r.status, 503, "answered, not cut off: {}", r.body);
    assert_eq!(liveroll.wait_exit().code(), Some(0));
}

#[test]
fn idle_keepalive_connections_are_closed_at_sigterm_while_a_request_drains() {
    let scratch = Scratch::new();
    let mut liveroll = Liveroll::start(
        &scratch,
        &["--drain-timeout", "1h", "--keepalive-timeout", "1h"],
    );
    liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;
    // A keep-alive connection that has served one request and sits idle.
    let mut idle = Conn::open(port).unwrap();
    assert_eq!(idle.send("GET", "/", b"", false).unwrap().status, 200);
    // A request in flight that lasts until this test ends it: the drain,
    // and so liveroll, cannot finish before.
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"GET /events?n=2&interval_ms=3600000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: event 1") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "stream closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    liveroll.signal(Signal::SIGTERM);
    liveroll.wait_log("event=stopping", 1);
    // The idle connection ends now, without waiting for the drain (as
    // nginx and Pingora close idle keep-alive connections at shutdown).
    let sent = idle.read_until_closed(PATIENCE);
    assert_eq!(sent.as_deref(), Some(&b""[..]), "{}", liveroll.log());
    liveroll.assert_running();
    drop(stream);
    assert_eq!(liveroll.wait_exit().code(), Some(0), "{}", liveroll.log());
}
