//! Rollovers with the real binary and the real demo app: what starts,
//! what restarts, and what must not be lost on the way. Continuous load
//! across many rollovers is `tests/soak.rs`.

mod common;

use std::thread;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[test]
fn startup_serves_the_first_child() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    let pid = liveroll.wait_version("v1");
    let r = liveroll.get("/").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body.contains(&format!("pid={pid}")), "{}", r.body);
    liveroll.wait_log("event=rolled trigger=startup id=v1", 1);
}

#[test]
fn unchanged_id_does_not_restart() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &["--interval", "50ms"]);
    let pid = liveroll.wait_version("v1");
    liveroll.wait_log("event=unchanged trigger=interval id=v1", 5);
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), pid);
    assert_eq!(
        liveroll.log().matches("event=spawn").count(),
        1,
        "{}",
        liveroll.log()
    );
}

#[test]
fn changed_id_rolls_and_the_old_tree_is_gone() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &["--interval", "50ms"]);
    let old = liveroll.wait_version("v1");
    scratch.set_version("v2");
    let new = liveroll.wait_version("v2");
    assert_ne!(old, new);
    // The demo is a grandchild (sh stays its parent): only a group kill reaches it.
    wait_for("the old demo to exit", || process_gone(old).then_some(()));
    liveroll.wait_log("event=rolled trigger=interval id=v2", 1);
    for _ in 0..10 {
        assert_eq!(
            liveroll.get("/").unwrap().demo_pid(),
            new,
            "only the new child serves"
        );
    }
}

#[test]
fn sighup_restarts_with_the_same_id_and_only_the_new_child_serves() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    let mut pid = liveroll.wait_version("v1");
    for round in 1..=3 {
        liveroll.signal(Signal::SIGHUP);
        let new = liveroll.wait_pid_change(pid);
        liveroll.wait_log("event=rolled trigger=sighup id=v1", round);
        wait_for("the previous demo to exit", || {
            process_gone(pid).then_some(())
        });
        assert_eq!(demo_pids(&scratch), vec![new], "exactly one demo runs");
        for _ in 0..6 {
            let r = liveroll.get("/").unwrap();
            assert_eq!((r.status, r.demo_pid()), (200, new), "{}", r.body);
        }
        pid = new;
    }
    // The seed's second SIGHUP killed a child with SIGKILL; here every
    // retirement is a SIGTERM the demo finishes cleanly.
    assert!(!liveroll.log().contains("event=kill"), "{}", liveroll.log());
}

#[test]
fn a_killed_child_is_replaced() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    let pid = liveroll.wait_version("v1");
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let new = liveroll.wait_pid_change(pid);
    assert_ne!(new, pid);
    liveroll.wait_log("event=exit unexpected=true", 1);
    liveroll.wait_log("event=rolled trigger=child-exit id=v1", 1);
}

#[test]
fn a_slow_request_in_flight_during_a_rollover_completes() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    let old = liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;
    let slow = thread::spawn(move || request(port, "GET", "/slow?ms=3000", b""));
    liveroll.wait_log("slow request started", 1);
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_log("event=drain", 1);
    assert!(
        liveroll.log().contains("inflight=1"),
        "the drain saw the request: {}",
        liveroll.log()
    );
    let response = slow.join().unwrap().unwrap();
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.demo_pid(),
        old,
        "served by the old child while it drained"
    );
    liveroll.wait_pid_change(old);
}

#[test]
fn proxy_adds_forwarding_headers() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    let r = liveroll.get("/headers").unwrap();
    assert!(
        r.body.contains("X-Forwarded-For: 127.0.0.1\n"),
        "{}",
        r.body
    );
    assert!(r.body.contains("X-Forwarded-Proto: http\n"), "{}", r.body);
    assert!(
        r.body.contains("X-Forwarded-Host: 127.0.0.1\n"),
        "{}",
        r.body
    );
    let echoed = request(liveroll.ports.proxy, "POST", "/echo", b"payload").unwrap();
    assert_eq!(echoed.body, "payload");
}
