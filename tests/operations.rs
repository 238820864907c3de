//! Operations: systemd's notification protocol, the admin endpoints, the
//! access log, the Pingora configuration check and the shipped unit file.

mod common;

use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// Replaces the digits after `key` with `*`, for values a test cannot know.
fn mask(message: &str, key: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find(key) {
        out.push_str(&rest[..at + key.len()]);
        rest = rest[at + key.len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push('*');
    }
    out + rest
}

#[test]
fn systemd_hears_ready_reloading_and_stopping_in_order() {
    let scratch = Scratch::new();
    let systemd = FakeSystemd::new(&scratch);
    let ports = free_ports();
    let (p1, p2) = (ports.child1, ports.child2);
    let mut liveroll = Liveroll::start_with_env(
        &scratch,
        ports,
        &[],
        &[
            ("NOTIFY_SOCKET", &systemd.path),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let old = liveroll.wait_version("v1");
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_pid_change(old);
    liveroll.wait_log("event=rolled trigger=sighup", 1);
    liveroll.signal(Signal::SIGTERM);
    assert_eq!(liveroll.wait_exit().code(), Some(0));

    let messages = wait_for("STOPPING=1 to arrive", || {
        let messages = systemd.messages();
        messages
            .iter()
            .any(|m| m.starts_with("STOPPING=1"))
            .then_some(messages)
    });
    let watchdog_pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    let sequence: Vec<String> = messages
        .iter()
        .filter(|m| *m != "WATCHDOG=1")
        .map(|m| mask(&mask(m, "pid="), "MONOTONIC_USEC="))
        .collect();
    let expected = [
        "STATUS=pulling (trigger=startup)".to_string(),
        format!("STATUS=starting id=v1 port={p1}"),
        format!("READY=1\nSTATUS=serving id=v1 port={p1} pid=*"),
        "RELOADING=1\nMONOTONIC_USEC=*".to_string(),
        "STATUS=pulling (trigger=sighup)".to_string(),
        format!("STATUS=starting id=v1 port={p2}"),
        format!("STATUS=draining port={p1} pid=*"),
        format!("READY=1\nSTATUS=serving id=v1 port={p2} pid=*"),
        "STOPPING=1\nSTATUS=stopping".to_string(),
    ];
    assert_eq!(sequence, expected, "{}", liveroll.log());
    assert!(watchdog_pings >= 1, "the watchdog was fed");
}

/// `POST /rollover` (`liveroll ctl rollover`) is a forced update like
/// SIGHUP, but systemd did not ask for it: no RELOADING=1, and so no READY=1
/// to end it, only the status.
#[test]
fn an_operator_rollover_is_no_reload_for_systemd() {
    let scratch = Scratch::new();
    let systemd = FakeSystemd::new(&scratch);
    let ports = free_ports();
    let (p1, p2) = (ports.child1, ports.child2);
    let (admin, admin_addr) = admin_address();
    let mut liveroll = Liveroll::start_with_env(
        &scratch,
        ports,
        &["--admin-listen", &admin_addr],
        &[("NOTIFY_SOCKET", &systemd.path)],
    );
    let old = liveroll.wait_version("v1");
    assert_eq!(
        request(admin, "POST", "/rollover", b"").unwrap().status,
        200
    );
    liveroll.wait_pid_change(old);
    liveroll.wait_log("event=rolled trigger=admin", 1);
    liveroll.signal(Signal::SIGTERM);
    assert_eq!(liveroll.wait_exit().code(), Some(0));
    let messages = wait_for("STOPPING=1 to arrive", || {
        let messages = systemd.messages();
        messages
            .iter()
            .any(|m| m.starts_with("STOPPING=1"))
            .then_some(messages)
    });
    let sequence: Vec<String> = messages.iter().map(|m| mask(m, "pid=")).collect();
    let expected = [
        "STATUS=pulling (trigger=startup)".to_string(),
        format!("STATUS=starting id=v1 port={p1}"),
        format!("READY=1\nSTATUS=serving id=v1 port={p1} pid=*"),
        "STATUS=pulling (trigger=admin)".to_string(),
        format!("STATUS=starting id=v1 port={p2}"),
        format!("STATUS=draining port={p1} pid=*"),
        format!("STATUS=serving id=v1 port={p2} pid=*"),
        "STOPPING=1\nSTATUS=stopping".to_string(),
    ];
    assert_eq!(sequence, expected, "{}", liveroll.log());
}

#[test]
fn children_do_not_inherit_the_notify_socket() {
    let scratch = Scratch::new();
    let systemd = FakeSystemd::new(&scratch);
    let env_file = scratch.path("child-env");
    let exec = format!("env > {}; {}", env_file.display(), scratch.exec_cmd());
    let liveroll = Liveroll::start_with_env(
        &scratch,
        free_ports(),
        &["--exec", &exec],
        &[
            ("NOTIFY_SOCKET", &systemd.path),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    liveroll.wait_version("v1");
    let env = std::fs::read_to_string(env_file).unwrap();
    assert!(
        !env.contains("NOTIFY_SOCKET") && !env.contains("WATCHDOG_USEC"),
        "{env}"
    );
}

fn admin_get(port: u16, path: &str) -> Response {
    request(port, "GET", path, b"").unwrap()
}

#[test]
fn admin_serves_ready_metrics_and_status() {
    let scratch = Scratch::new();
    scratch.set_flags("--start-delay 3s");
    let (admin, admin_addr) = admin_address();
    let mut liveroll = Liveroll::start(&scratch, &["--admin-listen", &admin_addr]);
    // Starting: not ready yet (the child sleeps before it listens).
    liveroll.wait_log("event=spawn", 1);
    let starting = admin_get(admin, "/ready");
    assert!(
        !liveroll.log().contains("event=publish"),
        "checked before the child was healthy"
    );
    assert_eq!(starting.status, 503);

    let pid = liveroll.wait_version("v1");
    assert_eq!(admin_get(admin, "/ready").status, 200);
    for _ in 0..5 {
        liveroll.get("/").unwrap();
    }
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_pid_change(pid);
    liveroll.wait_log("event=rolled trigger=sighup", 1);

    let metrics = admin_get(admin, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let sample = |name: &str| -> f64 {
        metrics
            .body
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{}", metrics.body))
    };
    assert!(sample("liveroll_responses_total{class=\"2xx\"}") >= 5.0);
    assert_eq!(sample("liveroll_rollouts_total{result=\"rolled\"}"), 2.0);
    assert_eq!(sample("liveroll_rollout_duration_seconds_count"), 2.0);
    assert_eq!(sample("liveroll_healthy_backends"), 1.0);
    assert_eq!(sample("liveroll_held_requests"), 0.0);
    assert_eq!(sample("liveroll_current_id_info{id=\"v1\"}"), 1.0);
    assert!(sample("process_resident_memory_bytes") > 0.0);

    let status: Value = serde_json::from_str(&admin_get(admin, "/status").body).unwrap();
    assert_eq!(status["current_id"], "v1");
    assert_eq!(status["ready"], true);
    let children = status["children"].as_array().unwrap();
    assert_eq!(children.len(), 1, "{status:#}");
    assert_eq!(children[0]["state"], "serving");
    assert_eq!(children[0]["slot"], 2);
    assert_eq!(children[0]["port"], liveroll.ports.child2);
    assert_eq!(children[0]["inflight"], 0);
    assert_eq!(status["last_update"]["trigger"], "sighup");
    assert_eq!(status["last_update"]["result"], "rolled");
    assert_eq!(status["config"]["interval"], "1h");
    assert_eq!(status["config"]["healthcheck"], "/healthz");

    assert_eq!(admin_get(admin, "/nope").status, 404);

    // While it drains at shutdown, /ready says 503 and the admin still answers.
    let port = liveroll.ports.proxy;
    let slow = thread::spawn(move || request(port, "GET", "/slow?ms=1500", b""));
    liveroll.wait_log("slow request started", 1);
    liveroll.signal(Signal::SIGTERM);
    wait_for("/ready to say 503 during the drain", || {
        request(admin, "GET", "/ready", b"")
            .ok()
            .filter(|r| r.status == 503)
    });
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    assert_eq!(liveroll.wait_exit().code(), Some(0));
}

#[test]
fn a_held_request_whose_client_leaves_is_dropped() {
    let scratch = Scratch::new();
    scratch.set_flags("--unhealthy");
    let (admin, admin_addr) = admin_address();
    let liveroll = Liveroll::start(
        &scratch,
        &["--admin-listen", &admin_addr, "--hold-timeout", "1h"],
    );
    let held = || metric(admin, "liveroll_held_requests").unwrap();
    let mut conn = Conn::open(liveroll.ports.proxy).unwrap();
    conn.write_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    wait_for("the request to be held", || (held() == 1.0).then_some(()));
    drop(conn);
    wait_for("the held request to be dropped", || {
        (held() == 0.0).then_some(())
    });
    liveroll.assert_running();
}

#[test]
fn the_access_log_is_off_unless_asked_for() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    liveroll.get("/headers").unwrap();
    liveroll.wait_log("event=rolled", 1);
    assert!(!liveroll.log().contains("path=\"/headers\""));
    drop(liveroll);

    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &["--access-log"]);
    liveroll.wait_version("v1");
    liveroll.get("/headers").unwrap();
    liveroll.wait_log("method=GET path=\"/headers\" status=200", 1);
    let line = liveroll.log_line("path=\"/headers\"");
    assert!(line.contains(" access] client=127.0.0.1:"), "{line}");
    assert!(
        line.contains(&format!("upstream_port={}", liveroll.ports.child1)),
        "{line}"
    );
}

#[test]
fn a_conf_file_with_an_unknown_key_is_refused_before_anything_starts() {
    let scratch = Scratch::new();
    scratch.write("bad.yaml", "version: 1\nthread: 4\n");
    let conf = scratch.path("bad.yaml").display().to_string();
    let mut liveroll = Liveroll::start(&scratch, &["--conf", &conf]);
    assert_eq!(liveroll.wait_exit().code(), Some(1));
    let log = liveroll.log();
    assert!(
        log.contains(&format!(
            "error: --conf {conf}: unknown key `thread` (did you mean `threads`?)"
        )),
        "{log}"
    );
    assert!(!log.contains("event=spawn"), "{log}");

    scratch.write("typo.yaml", "version: 1\nthreads: four\n");
    let conf = scratch.path("typo.yaml").display().to_string();
    let mut liveroll = Liveroll::start(&scratch, &["--conf", &conf]);
    assert_eq!(liveroll.wait_exit().code(), Some(1));
    assert!(
        liveroll
            .log()
            .contains("threads: invalid type: string \"four\""),
        "{}",
        liveroll.log()
    );
}

#[test]
fn the_shipped_conf_file_is_accepted() {
    let scratch = Scratch::new();
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/liveroll.yaml");
    let liveroll = Liveroll::start(&scratch, &["--conf", conf]);
    liveroll.wait_version("v1");
}

#[test]
fn an_admin_address_in_use_fails_fast() {
    let scratch = Scratch::new();
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = squatter.local_addr().unwrap().to_string();
    let mut liveroll = Liveroll::start(&scratch, &["--admin-listen", &addr]);
    assert_eq!(liveroll.wait_exit().code(), Some(1));
    assert!(
        liveroll
            .log()
            .contains(&format!("error: cannot listen on {addr} (--admin-listen)")),
        "{}",
        liveroll.log()
    );
}

#[test]
fn the_unit_file_is_consistent_and_verifies() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/liveroll.service"
    ))
    .unwrap();
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .trim()
            .to_string()
    };
    assert_eq!(value("Type"), "notify");
    assert_eq!(value("KillMode"), "mixed");
    assert_eq!(value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(value("Restart"), "on-failure");
    assert!(value("EnvironmentFile").starts_with("/etc/liveroll/"));
    // Stopping must fit: the env file's suggested shutdown delay, the drain,
    // --stop's limit (2 x kill timeout) and SIGTERM then SIGKILL (2 x kill
    // timeout), with the defaults, and a margin.
    let env =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/liveroll.env")).unwrap();
    let suggested = |key: &str| {
        env.lines()
            .find_map(|l| {
                l.trim_start_matches('#')
                    .strip_prefix(key)?
                    .strip_prefix('=')
            })
            .map(|v| humantime::parse_duration(v).unwrap())
            .unwrap_or_else(|| panic!("no {key} in the env file"))
    };
    let (delay, drain, kill) = (
        suggested("LIVEROLL_SHUTDOWN_DELAY"),
        suggested("LIVEROLL_DRAIN_TIMEOUT"),
        suggested("LIVEROLL_KILL_TIMEOUT"),
    );
    let stop = humantime::parse_duration(&value("TimeoutStopSec")).unwrap();
    let needed = delay + drain + 4 * kill;
    assert!(
        stop >= needed + Duration::from_secs(10),
        "TimeoutStopSec={stop:?}, needs {needed:?} and a margin"
    );
    assert_eq!(value("RuntimeDirectory"), "%N");

    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: skipping `systemd-analyze verify`");
        return;
    };
    assert!(out.status.success());
    let scratch = Scratch::new();
    let copy = scratch.path("liveroll.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/liveroll", LIVEROLL)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn with_a_shutdown_delay_ready_turns_503_while_requests_are_still_served() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    let mut liveroll = Liveroll::start(
        &scratch,
        &["--admin-listen", &admin_addr, "--shutdown-delay", "10s"],
    );
    liveroll.wait_version("v1");
    assert_eq!(admin_get(admin, "/ready").status, 200);
    liveroll.signal(Signal::SIGTERM);
    wait_for("/ready to say 503", || {
        request(admin, "GET", "/ready", b"")
            .ok()
            .filter(|r| r.status == 503)
    });
    let served = liveroll.get("/").unwrap();
    assert!(
        !liveroll.log().contains("event=stopped"),
        "still inside the delay"
    );
    assert_eq!(served.status, 200, "still serving during the delay");
    assert_eq!(liveroll.wait_exit().code(), Some(0));
    liveroll.wait_log("event=shutdown_delay delay=10s", 1);
}

#[test]
fn a_second_stop_signal_ends_the_shutdown_delay() {
    let scratch = Scratch::new();
    let mut liveroll = Liveroll::start(&scratch, &["--shutdown-delay", "1h"]);
    let pid = liveroll.wait_version("v1");
    liveroll.signal(Signal::SIGTERM);
    liveroll.wait_log("event=shutdown_delay delay=1h", 1);
    // Inside the delay no update starts, not even a forced one.
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_log("action=ignored reason=stopping", 1);
    liveroll.signal(Signal::SIGINT);
    assert_eq!(liveroll.wait_exit().code(), Some(0), "{}", liveroll.log());
    assert!(liveroll.log().contains("action=shutdown-now"));
    assert!(process_gone(pid));
    assert_eq!(
        liveroll.log().matches("event=spawn").count(),
        1,
        "{}",
        liveroll.log()
    );
}
