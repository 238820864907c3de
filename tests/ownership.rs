//! A child is everything it starts: processes that leave its process group
//! (setsid) or its parent (a double fork) are stopped with it; what a
//! crashed liveroll left behind is adopted by the next one if it is healthy,
//! else stopped; and a port held
//! by someone else is never published, whoever answers its health check.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;
use nix::sys::signal::Signal;

/// A script in the scratch directory that runs the demo app on port `$1`,
/// so `--exec` can wrap it in `setsid` or a double fork without quoting.
fn demo_script(scratch: &Scratch) -> String {
    let script = scratch.path("run-demo");
    let demo = scratch
        .exec_cmd()
        .replace("<<PORT>>", "\"$1\"")
        .replace("<<HEALTHCHECK>>", "/healthz");
    scratch.write("run-demo", &format!("exec {demo}\n"));
    script.display().to_string()
}

/// No process at all (not even a zombie) is left with this pid.
fn wait_reaped(pid: i32) {
    wait_for(&format!("process {pid} to be reaped"), || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
}

/// Starts liveroll with `exec` and checks that a rollover and a shutdown
/// each stop the demo, wherever it went.
fn escaped_children_are_stopped(exec: &str) {
    let scratch = Scratch::new();
    let exec = exec.replace("SCRIPT", &demo_script(&scratch));
    let mut liveroll = Liveroll::start(&scratch, &["--exec", &exec]);
    let old = liveroll.wait_version("v1");
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(old)))
        .unwrap()
        .as_raw();
    let shell = demo_pids(&scratch);
    assert_eq!(shell, vec![old]);
    // It really left: not in the group liveroll started.
    let leader = liveroll.log_line("event=spawn");
    let leader: i32 = leader
        .split_whitespace()
        .find_map(|f| f.strip_prefix("pid=")?.parse().ok())
        .unwrap();
    assert_ne!(
        pgid, leader,
        "the demo is outside the child's process group"
    );

    liveroll.signal(Signal::SIGHUP);
    let new = liveroll.wait_pid_change(old);
    wait_reaped(old);
    assert_eq!(demo_pids(&scratch), vec![new], "exactly one demo runs");

    liveroll.signal(Signal::SIGTERM);
    assert_eq!(liveroll.wait_exit().code(), Some(0), "{}", liveroll.log());
    assert!(
        process_gone(new),
        "the escaped demo {new} outlived liveroll"
    );
    assert!(demo_pids(&scratch).is_empty());
    assert!(port_is_free(liveroll.ports.child1) && port_is_free(liveroll.ports.child2));
}

#[test]
fn a_setsid_child_is_stopped_on_retirement_and_shutdown() {
    escaped_children_are_stopped("setsid -w sh SCRIPT <<PORT>>");
}

#[test]
fn a_double_forking_child_is_stopped_on_retirement_and_shutdown() {
    // The subshell starts the demo in a new session and exits at once: the
    // demo is orphaned (liveroll, the subreaper, becomes its parent) and the
    // child's own process stays in the foreground.
    escaped_children_are_stopped("(setsid sh SCRIPT <<PORT>> &); exec sleep 100000");
}

#[test]
fn after_liveroll_is_sigkilled_the_next_start_adopts_a_healthy_child_and_stops_the_rest() {
    let scratch = Scratch::new();
    let ports = free_ports();
    let (proxy, p1, p2) = (ports.proxy, ports.child1, ports.child2);
    let again = || Ports {
        proxy,
        child1: p1,
        child2: p2,
    };
    let mut first = Liveroll::start_on(&scratch, again(), &[]);
    let orphan = first.wait_version("v1");
    first.signal(Signal::SIGKILL);
    first.wait_exit();
    // Its child runs on, holding its port.
    assert!(!process_gone(orphan));

    // It is alive, the state file's, on its port and healthy: adopted as it
    // is, no cold start and nothing stopped.
    let mut second = Liveroll::start_on(&scratch, again(), &[]);
    assert_eq!(second.wait_version("v1"), orphan);
    second.wait_log("event=adopt", 1);
    assert!(
        second.log_line("event=adopt").ends_with("from=restart"),
        "{}",
        second.log()
    );
    assert!(!second.log().contains("event=leftover"), "{}", second.log());
    assert!(
        !second.log().contains("event=spawn"),
        "no child was started"
    );
    // Both slots work: a rollover retires the adopted child.
    second.signal(Signal::SIGHUP);
    let middle = second.wait_pid_change(orphan);
    wait_for("the adopted child to be stopped", || {
        process_gone(orphan).then_some(())
    });
    second.signal(Signal::SIGHUP);
    let pid = second.wait_pid_change(middle);
    // Retired: only the current child listens on a child port now.
    wait_for("the previous child to be stopped", || {
        process_gone(middle).then_some(())
    });
    assert!(
        !second.log().contains("event=update_failed"),
        "{}",
        second.log()
    );

    // A child that fails its health check is not adopted: the next start
    // stops it (event=leftover) and starts one of its own.
    let failed = request(p1.max(p2), "POST", "/admin/fail-health", b"")
        .or_else(|_| request(p1.min(p2), "POST", "/admin/fail-health", b""))
        .unwrap();
    assert_eq!(failed.status, 200);
    second.signal(Signal::SIGKILL);
    second.wait_exit();
    let mut third = Liveroll::start_on(&scratch, again(), &[]);
    third.wait_log("event=leftover", 1);
    let fresh = third.wait_pid_change(pid);
    assert!(
        process_gone(pid),
        "the unhealthy leftover {pid} was stopped"
    );
    assert_eq!(demo_pids(&scratch), vec![fresh]);
    third.signal(Signal::SIGTERM);
    assert_eq!(third.wait_exit().code(), Some(0), "{}", third.log());
    assert!(demo_pids(&scratch).is_empty(), "nothing left behind");
    assert!(port_is_free(p1) && port_is_free(p2));
}

#[test]
fn a_second_liveroll_on_the_same_child_ports_is_refused() {
    let scratch = Scratch::new();
    let ports = free_ports();
    let (p1, p2) = (ports.child1, ports.child2);
    let first = Liveroll::start_on(&scratch, ports, &[]);
    let pid = first.wait_version("v1");

    let other = Scratch::new();
    let ports = Ports {
        proxy: free_ports().proxy,
        child1: p1,
        child2: p2,
    };
    let state = scratch.dir.display().to_string();
    let mut second = Liveroll::start_on(&other, ports, &["--state-dir", &state]);
    assert_eq!(second.wait_exit().code(), Some(1), "{}", second.log());
    let said = second.log();
    assert!(
        said.contains(&format!(
            "error: --state-dir: another liveroll (pid {}) uses child ports {p1} and {p2}",
            first.process.id()
        )),
        "{said}"
    );
    assert!(!said.contains("event=spawn"), "{said}");
    // The first one was not disturbed.
    let r = first.get("/").unwrap();
    assert_eq!((r.status, r.demo_pid()), (200, pid));
    assert!(demo_pids(&other).is_empty());
}

/// Answers every request with 200, as a process that took the port would;
/// counts the requests that were not health checks.
struct Squatter {
    others: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Squatter {
    fn bind(port: u16) -> Squatter {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let others = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, done) = (others.clone(), stop.clone());
        thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let Ok((mut stream, _)) = listener.accept() else {
                    thread::sleep(std::time::Duration::from_millis(5));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                if !String::from_utf8_lossy(&buf[..n]).contains("/healthz") {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nsquatter\n",
                );
            }
        });
        Squatter { others, stop, port }
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        wait_for("the squatter to let go", || {
            port_is_free(self.port).then_some(())
        });
    }
}

#[test]
fn a_squatter_that_answers_the_health_check_is_never_published() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    let old = liveroll.wait_version("v1");
    // The next child starts slowly; a squatter takes its port after
    // liveroll found it free and before the child binds it.
    scratch.set_flags("--start-delay 1h");
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_log("event=spawn", 2);
    let squatter = Squatter::bind(liveroll.ports.child2);
    liveroll.wait_log("event=update_failed trigger=sighup step=listener", 1);
    let line = liveroll.log_line("event=update_failed");
    assert!(
        line.contains(&format!(
            "error=\"port {} is held by pid {} (",
            liveroll.ports.child2,
            std::process::id()
        )),
        "{line}"
    );
    assert!(line.contains("serving_id=v1"), "{line}");
    for _ in 0..10 {
        let r = liveroll.get("/").unwrap();
        assert_eq!((r.status, r.demo_pid()), (200, old), "{}", r.body);
    }
    assert_eq!(
        squatter.others.load(Ordering::Relaxed),
        0,
        "no request reached it"
    );
    wait_for("only the old demo to be left", || {
        (demo_pids(&scratch) == vec![old]).then_some(())
    });
}
