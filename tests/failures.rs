//! Every failure path: each one is logged with its cause on one line, and
//! whatever was already serving keeps serving.

mod common;

use std::net::{Ipv4Addr, TcpListener};

use common::*;
use nix::sys::signal::Signal;

/// Starts on v1, then breaks the next update with `break_it` and triggers it
/// with SIGHUP; returns the log line of the failure once it is there.
fn failed_update(
    scratch: &Scratch,
    extra: &[&str],
    break_it: impl FnOnce(),
    step: &str,
) -> (Liveroll, i32, String) {
    let liveroll = Liveroll::start(scratch, extra);
    let pid = liveroll.wait_version("v1");
    break_it();
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_log(
        &format!("event=update_failed trigger=sighup step={step}"),
        1,
    );
    let line = liveroll.log_line("event=update_failed");
    assert!(line.contains("serving_id=v1"), "{line}");
    // The old child was not disturbed: same process, still answering.
    for _ in 0..5 {
        let r = liveroll.get("/").unwrap();
        assert_eq!((r.status, r.demo_pid()), (200, pid), "{}", r.body);
    }
    (liveroll, pid, line)
}

#[test]
fn a_child_that_never_becomes_healthy_is_killed_and_the_old_one_serves() {
    let scratch = Scratch::new();
    let (_liveroll, old, line) = failed_update(
        &scratch,
        &["--health-timeout", "1s"],
        || {
            scratch.set_version("v2");
            scratch.set_flags("--unhealthy");
        },
        "health",
    );
    assert!(
        line.contains("not healthy within 1s (last probe: HTTP 503)"),
        "{line}"
    );
    wait_for("only the old demo to be left", || {
        (demo_pids(&scratch) == vec![old]).then_some(())
    });
}

#[test]
fn a_failing_pull_keeps_the_old_child() {
    let scratch = Scratch::new();
    let broken = scratch.path("registry-down");
    let pull = format!(
        "if [ -e {} ]; then echo registry unreachable >&2; exit 7; fi",
        broken.display()
    );
    let (_liveroll, _, line) = failed_update(
        &scratch,
        &["--pull", &pull],
        || {
            scratch.set_version("v2");
            scratch.write("registry-down", "");
        },
        "pull",
    );
    assert!(
        line.contains("exit status: 7") && line.contains("registry unreachable"),
        "{line}"
    );
}

#[test]
fn an_empty_id_is_a_failed_update() {
    let scratch = Scratch::new();
    let (_liveroll, _, line) = failed_update(&scratch, &[], || scratch.set_version("  \n"), "id");
    assert!(line.contains("printed an empty ID"), "{line}");
}

#[test]
fn an_id_command_that_fails_is_a_failed_update() {
    let scratch = Scratch::new();
    let (_liveroll, _, line) = failed_update(
        &scratch,
        &[],
        || std::fs::remove_file(scratch.path("version")).unwrap(),
        "id",
    );
    assert!(
        line.contains("--id failed: exit status: 1") && line.contains("No such file"),
        "{line}"
    );
}

#[test]
fn an_exec_that_dies_is_a_failed_update() {
    let scratch = Scratch::new();
    let (_liveroll, _, line) = failed_update(
        &scratch,
        &[],
        || scratch.set_flags("--no-such-flag"),
        "health",
    );
    // The demo rejects the flag; the wrapping shell then ends normally.
    assert!(
        line.contains("new child exited before it was healthy (exit status: 0)"),
        "{line}"
    );
}

#[test]
fn a_hung_pull_is_killed_at_the_command_timeout() {
    let scratch = Scratch::new();
    let hang = scratch.path("hang");
    let pull = format!("if [ -e {} ]; then sleep 1000; fi", hang.display());
    let (_liveroll, _, line) = failed_update(
        &scratch,
        &["--pull", &pull, "--command-timeout", "500ms"],
        || scratch.write("hang", ""),
        "pull",
    );
    assert!(
        line.contains("timed out after 500ms, process group killed"),
        "{line}"
    );
    wait_for("the hung sleep to be killed", || {
        pids_starting_with("sleep 1000").is_empty().then_some(())
    });
}

#[test]
fn a_child_port_held_by_another_process_is_never_used() {
    let scratch = Scratch::new();
    let ports = free_ports();
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, ports.child1)).unwrap();
    let taken = ports.child1;
    let liveroll = Liveroll::start_on(&scratch, ports, &[]);
    // Startup takes the other slot.
    let pid = liveroll.wait_version("v1");
    liveroll.wait_log("event=rolled trigger=startup id=v1 slot=2", 1);
    // The next rollover has no usable slot: it fails and the child stays.
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_log("event=update_failed trigger=sighup step=slot", 1);
    assert!(liveroll.log().contains(&format!(
        "child port {taken} already in use by another process"
    )));
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), pid);
    // Once the port is free again, rollovers resume.
    drop(squatter);
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_pid_change(pid);
}

#[test]
fn with_no_healthy_child_the_proxy_answers_503() {
    let scratch = Scratch::new();
    scratch.set_flags("--unhealthy");
    let liveroll = Liveroll::start(
        &scratch,
        &["--health-timeout", "200ms", "--hold-timeout", "100ms"],
    );
    liveroll.wait_log("event=update_failed trigger=startup step=health", 1);
    let r = liveroll.get("/").unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.body, "503 Service Unavailable: no healthy backend\n");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        demo_pids(&scratch).is_empty(),
        "the unhealthy child was stopped"
    );
}

#[test]
fn a_failed_startup_is_retried_at_the_next_interval() {
    let scratch = Scratch::new();
    scratch.set_version("");
    let liveroll = Liveroll::start(&scratch, &["--interval", "100ms", "--hold-timeout", "10ms"]);
    liveroll.wait_log("printed an empty ID", 1);
    assert_eq!(liveroll.get("/").unwrap().status, 503);
    scratch.set_version("v1");
    liveroll.wait_version("v1");
}

#[test]
fn an_id_of_megabytes_or_binary_is_a_failed_update() {
    let scratch = Scratch::new();
    let mode = scratch.path("id-mode");
    let id = format!(
        "case $(cat {m} 2>/dev/null) in big) head -c 5000000 /dev/zero | tr '\\0' a;; binary) printf '\\377\\376';; *) cat {v};; esac",
        m = mode.display(),
        v = scratch.path("version").display()
    );
    let (liveroll, _, line) = failed_update(
        &scratch,
        &["--id", &id],
        || scratch.write("id-mode", "big"),
        "id",
    );
    assert!(line.contains("printed more than 4096 bytes"), "{line}");
    scratch.write("id-mode", "binary");
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_log("printed bytes that are not UTF-8", 1);
    assert_eq!(liveroll.get("/").unwrap().status, 200);
}
