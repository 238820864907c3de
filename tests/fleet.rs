//! Several hosts behind a real load balancer: two hosts, each a liveroll with
//! the demo app in its own network namespace, behind HAProxy running
//! `conf/haproxy.cfg`, then behind open-source nginx running
//! `conf/nginx-lb.conf` (each as written; only the addresses, the stats
//! socket and the pid file differ), under client load from the load
//! balancer's namespace. See `tests/common/netns.rs` for the topology.
//!
//! `cargo test --test fleet -- --nocapture` prints each scenario's request
//! and failure counts, and what the load balancer did about them. Needs root
//! (CAP_NET_ADMIN and CAP_SYS_ADMIN), HAProxy and nginx; without them it says
//! "skipped", or fails under `CI=true`.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use common::netns::*;
use common::*;
use nix::sys::signal::Signal;

/// The client threads; each has at most one request in flight.
const KINDS: &[&str] = &[
    "keep-alive GET",
    "keep-alive GET",
    "new-connection GET",
    "POST",
];
/// Longer than HAProxy's `inter 500ms` x `fall 2` in conf/haproxy.cfg, as
/// the README asks.
const SHUTDOWN_DELAY: &str = "1.5s";
/// conf/haproxy.cfg's backend and its servers, one per host in order.
const BACKEND: &str = "liveroll";
const SERVERS: [&str; 2] = ["a", "b"];
/// HAProxy's frontend port in conf/haproxy.cfg (`bind :80`), inside `lb`.
const FRONTEND_PORT: u16 = 80;
/// Successes each client thread must have between two steps of a scenario,
/// so every step happens under load.
const PROGRESS: usize = 100;

fn reference(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("conf")
        .join(name)
}

/// Whether `program` can be run at all.
fn installed(program: &str, version_flag: &str) -> bool {
    Command::new(program)
        .arg(version_flag)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn reference_load_balancer_configs_are_accepted() {
    if !installed("haproxy", "-v") || !installed("nginx", "-v") {
        skip_or_fail("HAProxy and nginx are needed (apt-get install haproxy nginx)");
        return;
    }
    // /proc/self belongs to the effective user.
    if !fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
        skip_or_fail("`nginx -t` needs root: it opens the configured pid file");
        return;
    }
    Haproxy::check(&reference("haproxy.cfg"));
    Nginx::check(&reference("nginx-lb.conf"));
}

/// One scenario under fresh load from `lb`: `steps` runs while the clients
/// send requests through the load balancer. Prints and returns what the
/// clients saw.
fn scenario(name: &str, fleet: &Fleet, steps: impl FnOnce(&NsLoad)) -> Tally {
    let started = Instant::now();
    let load = NsLoad::start(&fleet.lb, FRONTEND_PORT, KINDS);
    load.wait_progress(PROGRESS);
    steps(&load);
    load.wait_progress(PROGRESS);
    let tally = load.finish();
    eprintln!(
        "fleet {name}: {tally} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for failure in tally.failures() {
        eprintln!("  client: {}", failure.lines().next().unwrap_or_default());
    }
    tally
}

/// [`scenario`] behind HAProxy, with what HAProxy did about it: its retry
/// and redispatch counters, and its log (dontlog-normal: only requests with
/// an error, a retry or a redispatch), of which the health-check verdicts and
/// the requests that did not end in 2xx are shown. A client connection
/// HAProxy closed without an answer is not logged at all.
fn haproxy_scenario(
    name: &str,
    fleet: &Fleet,
    haproxy: &Haproxy,
    steps: impl FnOnce(&NsLoad),
) -> Tally {
    let counters = || {
        (
            haproxy.counter(BACKEND, "BACKEND", "wretr"),
            haproxy.counter(BACKEND, "BACKEND", "wredis"),
        )
    };
    let before = counters();
    let log_before = haproxy.log().len();
    let tally = scenario(name, fleet, steps);
    let after = counters();
    eprintln!(
        "  HAProxy retried {}, redispatched {}",
        after.0 - before.0,
        after.1 - before.1
    );
    // (Lines starting with `[` repeat the log on stderr.)
    for line in haproxy.log()[log_before..].lines() {
        let status = line.split_whitespace().nth(5).unwrap_or_default();
        if !line.starts_with('[') && !status.starts_with('2') {
            eprintln!("  HAProxy: {line}");
        }
    }
    tally
}

/// [`scenario`] behind nginx, with what nginx logged about it (at `warn`
/// and above): each kind of message once, with its count.
fn nginx_scenario(name: &str, fleet: &Fleet, nginx: &Nginx, steps: impl FnOnce(&NsLoad)) -> Tally {
    let log_before = nginx.log().len();
    let tally = scenario(name, fleet, steps);
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for line in nginx.log()[log_before..].lines() {
        // `DATE TIME [level] PID#TID: *CONN message, client: ...`
        let message = line.split(": ").skip(1).collect::<Vec<_>>().join(": ");
        let message = message.split(", client:").next().unwrap_or_default();
        let message = message.trim_start_matches(|c: char| c == '*' || c.is_ascii_digit());
        match kinds.iter_mut().find(|(m, _)| m == message.trim()) {
            Some((_, n)) => *n += 1,
            None => kinds.push((message.trim().to_string(), 1)),
        }
    }
    for (message, n) in kinds {
        eprintln!("  nginx: {n} x {message}");
    }
    tally
}

/// Waits until `host`'s liveroll has answered 2xx to requests beyond those
/// it had answered now. In this topology every request comes through the
/// load balancer: the host has its traffic back.
fn wait_served_again(host: &Host) {
    const SERVED: &str = "liveroll_responses_total{class=\"2xx\"}";
    let served = host.metric(SERVED).unwrap_or(0.0);
    wait_for(&format!("{} to get requests again", host.ns.name), || {
        (host.metric(SERVED).unwrap_or(0.0) > served).then_some(())
    });
}

/// The tests of this file each use both cores fully: one at a time.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Namespaces `lb`, `h1` and `h2` with a liveroll started on each host with
/// `extra` flags; `None` (after saying why) if the machine cannot.
fn two_hosts(extra: &[&str]) -> Option<(Fleet, Vec<Host>)> {
    let fleet = match Fleet::create(2) {
        Ok(fleet) => fleet,
        Err(e) => {
            skip_or_fail(&format!("cannot create network namespaces: {e}"));
            return None;
        }
    };
    let mut hosts: Vec<Host> = fleet
        .hosts
        .iter()
        .map(|(ns, addr)| Host::new(ns, *addr, extra))
        .collect();
    for host in &mut hosts {
        host.start();
    }
    Some((fleet, hosts))
}

/// Both hosts stop cleanly, at once.
fn stop_all(hosts: &mut [Host]) {
    for host in hosts.iter() {
        host.signal(Signal::SIGTERM);
    }
    for host in hosts.iter_mut() {
        let status = host.wait_exit();
        assert!(status.success(), "liveroll's stop: {status}");
    }
}

#[test]
fn hosts_behind_haproxy_roll_stop_and_crash_without_losing_requests() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    if !installed("haproxy", "-v") {
        skip_or_fail("HAProxy is not installed (apt-get install haproxy)");
        return;
    }
    // The fleet is declared first, so dropped last: after the hosts and
    // HAProxy.
    let Some((fleet, mut hosts)) = two_hosts(&["--shutdown-delay", SHUTDOWN_DELAY]) else {
        return;
    };

    let scratch = Scratch::new();
    let socket = scratch.path("haproxy.sock");
    let config = from_reference(
        &fs::read_to_string(reference("haproxy.cfg")).unwrap(),
        &[
            (
                "stats socket /run/haproxy/admin.sock",
                format!("stats socket {}", socket.display()),
            ),
            ("10.0.0.1:8080", format!("{}:{PROXY_PORT}", hosts[0].addr)),
            ("10.0.0.2:8080", format!("{}:{PROXY_PORT}", hosts[1].addr)),
        ],
    );
    assert!(
        config.contains(&format!("check port {READY_PORT} ")),
        "the reference checks another readiness port than the hosts use"
    );
    let config_path = scratch.path("haproxy.cfg");
    fs::write(&config_path, config).unwrap();
    Haproxy::check(&config_path);
    let haproxy = Haproxy::start(&fleet.lb, &config_path, socket, scratch.path("haproxy.log"));
    for server in SERVERS {
        haproxy.wait_state(BACKEND, server, "UP");
    }

    // (a) A forced rollover on each host, one after the other, as the
    // README's fleet recipe does it: `liveroll ctl rollover --wait` on a
    // host, then the next.
    let rollovers = haproxy_scenario(
        "(a) `liveroll ctl rollover --wait` on each host",
        &fleet,
        &haproxy,
        |load| {
            for host in &hosts {
                host.rollover();
                load.wait_progress(PROGRESS);
            }
        },
    );
    assert!(
        rollovers.failures().is_empty(),
        "rollovers lost requests: {rollovers}"
    );

    // (b) Maintenance: SIGTERM with --shutdown-delay longer than HAProxy's
    // inter x fall, so HAProxy takes the host out (through /ready) before
    // liveroll stops accepting; then the host comes back.
    let maintenance = haproxy_scenario(
        "(b) SIGTERM maintenance of one host and its return",
        &fleet,
        &haproxy,
        |load| {
            let host = &mut hosts[0];
            host.signal(Signal::SIGTERM);
            haproxy.wait_state(BACKEND, SERVERS[0], "DOWN");
            load.wait_progress(PROGRESS);
            let status = host.wait_exit();
            assert!(status.success(), "liveroll's stop: {status}");
            host.start();
            haproxy.wait_state(BACKEND, SERVERS[0], "UP");
            wait_served_again(host);
        },
    );
    assert!(
        maintenance.failures().is_empty(),
        "maintenance lost requests: {maintenance}"
    );

    // (c) SIGKILL of one liveroll. It is restarted once HAProxy has taken the
    // host out (as systemd's Restart=on-failure with RestartSec=2s in
    // conf/liveroll.service would), and must serve again by itself. Only
    // requests caught on the killed host may fail: HAProxy resends a GET that
    // got no answer (retry-on empty-response) but not a POST that was sent.
    // A POST is caught in flight, or sent on a connection the host accepted
    // while the kernel tore it down (HAProxy then answers 502 "SH--"); the
    // bound allowed is the number of client threads.
    let mut orphans = Vec::new();
    let crash = haproxy_scenario(
        "(c) SIGKILL of one liveroll and its restart",
        &fleet,
        &haproxy,
        |load| {
            let host = &mut hosts[1];
            host.signal(Signal::SIGKILL);
            host.wait_exit();
            haproxy.wait_state(BACKEND, SERVERS[1], "DOWN");
            load.wait_progress(PROGRESS);
            orphans = demo_pids(&host.scratch);
            host.start();
            haproxy.wait_state(BACKEND, SERVERS[1], "UP");
            wait_served_again(host);
        },
    );
    // The SIGKILLed liveroll left its child running; the restarted one
    // found it in its state file, alive, on its port and healthy, and
    // adopted it: the same app serves, without a cold start.
    assert!(!orphans.is_empty(), "the kill left a child behind");
    assert_eq!(
        demo_pids(&hosts[1].scratch),
        orphans,
        "host 2 serves from the adopted demo"
    );
    eprintln!(
        "fleet (c): {} demo(s) left by the SIGKILLed liveroll, adopted by its restart",
        orphans.len()
    );
    assert!(
        crash.failures().len() <= KINDS.len(),
        "more requests failed than were in flight: {crash}"
    );

    stop_all(&mut hosts);
    eprintln!(
        "fleet: the whole test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The same hosts behind open-source nginx running `conf/nginx-lb.conf` (only
/// the addresses and the pid file differ). nginx has no active health
/// checks, so it never sees /ready and liveroll runs without
/// --shutdown-delay: nginx learns that a host is gone from refused
/// connections, and resends those requests to the other host.
#[test]
fn hosts_behind_open_source_nginx_stop_and_crash() {
    let _serial = one_at_a_time();
    let started = Instant::now();
    if !installed("nginx", "-v") {
        skip_or_fail("nginx is not installed (apt-get install nginx)");
        return;
    }
    let Some((fleet, mut hosts)) = two_hosts(&[]) else {
        return;
    };
    let scratch = Scratch::new();
    let config = from_reference(
        &fs::read_to_string(reference("nginx-lb.conf")).unwrap(),
        &[
            (
                "pid /run/nginx-lb.pid;",
                format!("pid {};", scratch.path("nginx.pid").display()),
            ),
            ("10.0.0.1:8080", format!("{}:{PROXY_PORT}", hosts[0].addr)),
            ("10.0.0.2:8080", format!("{}:{PROXY_PORT}", hosts[1].addr)),
        ],
    );
    let config_path = scratch.path("nginx.conf");
    fs::write(&config_path, config).unwrap();
    Nginx::check(&config_path);
    let nginx = Nginx::start(
        &fleet.lb,
        &config_path,
        FRONTEND_PORT,
        scratch.path("nginx.log"),
    );

    // (b) Maintenance: SIGTERM, the host drains and stops, comes back. A
    // GET nginx sends on a pooled connection that the stopping liveroll
    // closes at that moment is resent to the other host; a POST is not (no
    // `non_idempotent`) and gets 502. Only POSTs can fail, only while the
    // host stops: the bound allowed is the number of client threads.
    let maintenance = nginx_scenario(
        "nginx (b) SIGTERM maintenance of one host and its return",
        &fleet,
        &nginx,
        |load| {
            let host = &mut hosts[0];
            host.signal(Signal::SIGTERM);
            let status = host.wait_exit();
            assert!(status.success(), "liveroll's stop: {status}");
            load.wait_progress(PROGRESS);
            host.start();
            // nginx tries the host again once fail_timeout has passed.
            wait_served_again(host);
        },
    );
    assert!(
        maintenance.failures().len() <= KINDS.len(),
        "more requests failed than could be caught: {maintenance}"
    );

    // (c) SIGKILL of one liveroll, restarted after the load has run on the
    // other host for a while. As behind HAProxy: a GET without an answer is
    // resent, a POST that was sent is not.
    let crash = nginx_scenario(
        "nginx (c) SIGKILL of one liveroll and its restart",
        &fleet,
        &nginx,
        |load| {
            let host = &mut hosts[1];
            host.signal(Signal::SIGKILL);
            host.wait_exit();
            load.wait_progress(PROGRESS);
            host.start();
            wait_served_again(host);
        },
    );
    assert!(
        crash.failures().len() <= KINDS.len(),
        "more requests failed than could be caught: {crash}"
    );

    stop_all(&mut hosts);
    eprintln!(
        "fleet: the nginx test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
