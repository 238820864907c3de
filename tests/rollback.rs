//! A bad version never stays: a new child is judged on its live traffic
//! during the bake window, and one that answers errors, is slow or crashes
//! is rolled back to the previous child, which never stopped running.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use common::*;
use nix::sys::signal::Signal;

/// Flags for a test that bakes: a window that only a rollback (or the test)
/// ends, and few requests needed before the rules judge.
const BAKE: [&str; 4] = ["--bake", "1h", "--rollback-min-requests", "10"];

/// Starts liveroll on v1 with `extra` flags, and sends it some requests so
/// the previous child has figures to be compared with.
fn serving_v1(scratch: &Scratch, extra: &[&str]) -> (Liveroll, i32) {
    let mut flags = BAKE.to_vec();
    flags.extend_from_slice(extra);
    let liveroll = Liveroll::start(scratch, &flags);
    let pid = liveroll.wait_version("v1");
    // Enough that its p99 is not just its slowest request (a first
    // connection on a busy machine).
    for _ in 0..300 {
        assert_eq!(liveroll.get("/").unwrap().status, 200);
    }
    (liveroll, pid)
}

/// Rolls to v2 started with the demo flags `bad` and waits for its bake.
fn bad_v2(scratch: &Scratch, liveroll: &Liveroll, bad: &str) {
    scratch.set_version("v2");
    scratch.set_flags(bad);
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_log("event=bake id=v2 previous_id=v1", 1);
}

/// Requests `/` until the log shows a rollback; returns (requests, failed).
fn load_until_rolled_back(liveroll: &Liveroll) -> (usize, usize) {
    let (mut sent, mut failed) = (0, 0);
    let deadline = std::time::Instant::now() + PATIENCE;
    while !liveroll.log().contains("event=rolled-back") {
        assert!(
            std::time::Instant::now() < deadline,
            "no rollback after {sent} requests:\n{}",
            liveroll.log()
        );
        liveroll.assert_running();
        sent += 1;
        if liveroll.get("/").map_or(true, |r| r.status != 200) {
            failed += 1;
        }
    }
    (sent, failed)
}

/// A client loop of `GET /` on new connections, noting when each answer
/// came and whether it was a 200.
struct Client {
    answers: Arc<Mutex<Vec<(u128, bool)>>>,
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<()>,
}

impl Client {
    fn start(port: u16) -> Client {
        let answers: Arc<Mutex<Vec<(u128, bool)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (answers, stop) = (answers.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ok = request(port, "GET", "/", b"").is_ok_and(|r| r.status == 200);
                    answers.lock().unwrap().push((epoch_ms(), ok));
                }
            })
        };
        Client {
            answers,
            stop,
            thread,
        }
    }

    /// Stops the loop; the answers, oldest first.
    fn stop(self) -> Vec<(u128, bool)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.answers.lock().unwrap())
    }
}

#[test]
fn a_version_that_answers_500_is_rolled_back_to_the_warm_child() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    let (liveroll, old) = serving_v1(&scratch, &["--admin-listen", &admin_addr]);
    bad_v2(&scratch, &liveroll, "--fail-rate 100");
    let (sent, failed) = load_until_rolled_back(&liveroll);
    assert!(
        failed >= 1 && sent >= failed,
        "{sent} sent, {failed} failed"
    );
    let line = liveroll.log_line("event=rolled-back");
    assert!(
        line.contains("rule=error-rate id=v2 previous_id=v1 new=\"requests="),
        "{line}"
    );
    assert!(line.contains("error_rate=100.0%"), "{line}");
    // The previous child serves again: the same process, no cold start.
    for _ in 0..10 {
        let r = liveroll.get("/").unwrap();
        assert_eq!((r.status, r.demo_pid()), (200, old), "{}", r.body);
    }
    wait_for("the bad child to be stopped", || {
        (demo_pids(&scratch) == vec![old]).then_some(())
    });
    assert_eq!(
        metric(admin, "liveroll_rollbacks_total{reason=\"error-rate\"}"),
        Some(1.0)
    );
    let status: serde_json::Value =
        serde_json::from_str(&request(admin, "GET", "/status", b"").unwrap().body).unwrap();
    assert_eq!(status["current_id"], "v1");
    assert_eq!(status["last_rollback"]["id"], "v2");
    assert_eq!(status["last_rollback"]["reason"], "error-rate");
    assert_eq!(status["bake"], serde_json::Value::Null);
}

#[test]
fn a_quarantined_id_is_not_retried_but_a_new_id_is() {
    let scratch = Scratch::new();
    let (liveroll, old) = serving_v1(&scratch, &["--interval", "100ms"]);
    // An interval update finds v2: not forced.
    scratch.set_flags("--fail-rate 100");
    scratch.set_version("v2");
    liveroll.wait_log("event=bake id=v2 previous_id=v1", 1);
    load_until_rolled_back(&liveroll);
    // v2 is what --id prints at every interval now, and is skipped.
    liveroll.wait_log("event=quarantined trigger=interval id=v2 serving_id=v1", 3);
    assert_eq!(liveroll.log().matches("event=spawn").count(), 2);
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), old);
    // Another ID goes ahead.
    scratch.set_flags("");
    scratch.set_version("v3");
    liveroll.wait_version("v3");
}

#[test]
fn with_a_canary_few_requests_reach_a_bad_version() {
    let scratch = Scratch::new();
    let (liveroll, old) = serving_v1(&scratch, &["--canary", "10"]);
    // Answers, with when they came, while the window is open.
    let client = Client::start(liveroll.ports.proxy);
    bad_v2(&scratch, &liveroll, "--fail-rate 100");
    liveroll.wait_log("event=rolled-back rule=error-rate", 1);
    let answers = client.stop();
    let opened = log_ms(&liveroll.log_line("event=bake id=v2"));
    let closed = log_ms(&liveroll.log_line("event=rolled-back"));
    let window: Vec<bool> = answers
        .iter()
        .filter(|(at, _)| (opened..=closed).contains(at))
        .map(|(_, ok)| *ok)
        .collect();
    let failed = window.iter().filter(|ok| !**ok).count();
    eprintln!(
        "canary 10%: {} requests in the window, {failed} failed",
        window.len()
    );
    assert!(window.len() >= 10, "the window saw traffic");
    assert!(
        (failed as f64) < 0.15 * window.len() as f64,
        "{failed} of {} failed",
        window.len()
    );
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), old);
}

#[test]
fn a_client_with_the_canary_cookie_stays_on_its_side() {
    let scratch = Scratch::new();
    let (liveroll, old) = serving_v1(&scratch, &["--canary", "50"]);
    scratch.set_version("v2");
    liveroll.signal(Signal::SIGHUP);
    liveroll.wait_log("event=bake id=v2 previous_id=v1 window=1h canary=50%", 1);
    // New clients get a cookie naming their side, half on each.
    let mut sides = Vec::new();
    for _ in 0..10 {
        let r = liveroll.get("/").unwrap();
        let cookie = r.header("set-cookie").expect("a cookie").to_string();
        sides.push((cookie.split(';').next().unwrap().to_string(), r.demo_pid()));
    }
    assert!(sides.iter().any(|(_, pid)| *pid == old));
    assert!(sides.iter().any(|(_, pid)| *pid != old));
    // With its cookie, a client lands where it landed first, every time.
    for (cookie, pid) in &sides {
        for _ in 0..3 {
            let mut conn = Conn::open(liveroll.ports.proxy).unwrap();
            conn.write_raw(
                format!(
                    "GET / HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
            let r = conn.read_response(false).unwrap();
            assert_eq!(r.demo_pid(), *pid, "{cookie}");
            assert_eq!(r.header("set-cookie"), None, "already has one");
        }
    }
}

#[test]
fn a_version_five_times_slower_is_rolled_back() {
    let scratch = Scratch::new();
    let (liveroll, old) = serving_v1(&scratch, &[]);
    bad_v2(&scratch, &liveroll, "--latency 100ms");
    load_until_rolled_back(&liveroll);
    let line = liveroll.log_line("event=rolled-back");
    assert!(line.contains("rule=latency id=v2 previous_id=v1"), "{line}");
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), old);
}

#[test]
fn a_version_that_crashes_while_baking_is_rolled_back_without_a_cold_start() {
    let scratch = Scratch::new();
    let (liveroll, old) = serving_v1(&scratch, &[]);
    bad_v2(&scratch, &liveroll, "--crash-after 300ms");
    liveroll.wait_log("event=rolled-back rule=crashed id=v2 previous_id=v1", 1);
    let r = liveroll.get("/").unwrap();
    assert_eq!(
        (r.status, r.demo_pid()),
        (200, old),
        "the warm child, same pid"
    );
    // Nothing was started to get there.
    assert_eq!(liveroll.log().matches("event=spawn").count(), 2);
    assert!(!liveroll.log().contains("event=update_failed"));
}

#[test]
fn two_rollovers_in_a_row_while_baking_never_leave_three_children() {
    let scratch = Scratch::new();
    let (liveroll, first) = serving_v1(&scratch, &[]);
    liveroll.signal(Signal::SIGHUP);
    let second = liveroll.wait_pid_change(first);
    liveroll.wait_log("event=bake id=v1 previous_id=v1", 1);
    assert_eq!(demo_pids(&scratch).len(), 2, "the previous one is warm");
    liveroll.signal(Signal::SIGHUP);
    let third = liveroll.wait_pid_change(second);
    liveroll.wait_log("event=promoted id=v1 previous_id=v1 reason=superseded", 1);
    liveroll.wait_log("event=bake id=v1 previous_id=v1", 2);
    wait_for("the first child to be stopped", || {
        process_gone(first).then_some(())
    });
    let mut left = demo_pids(&scratch);
    left.sort_unstable();
    let mut want = vec![second, third];
    want.sort_unstable();
    assert_eq!(left, want, "the baking child and the warm one");
}

/// `--exec` that starts the version `--id` printed, through `<<ID>>`, so an
/// earlier version can be started again.
fn exec_by_id(scratch: &Scratch) -> String {
    format!(
        "{DEMO} --port <<PORT>> --healthcheck <<HEALTHCHECK>> --app-version <<ID>> --label {}",
        scratch.dir.display()
    )
}

#[test]
fn rollback_after_the_window_starts_the_previous_id_and_quarantines_the_current_one() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    let liveroll = Liveroll::start_with_exec(
        &scratch,
        free_ports(),
        &exec_by_id(&scratch),
        &["--admin-listen", &admin_addr, "--interval", "100ms"],
        &[],
    );
    let v1 = liveroll.wait_version("v1");
    scratch.set_version("v2");
    let v2 = liveroll.wait_version("v2");
    wait_for("v1's child to be retired", || {
        process_gone(v1).then_some(())
    });

    let answer = request(admin, "POST", "/rollback", b"").unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("rolled back"), "{}", answer.body);
    // A new child of v1: the old one is long gone.
    let r = liveroll.get("/").unwrap();
    assert!(r.body.starts_with("version=v1 "), "{}", r.body);
    assert_ne!(r.demo_pid(), v1);
    wait_for("v2's child to be retired", || {
        process_gone(v2).then_some(())
    });
    // --id still prints v2, and the interval does not go back to it.
    liveroll.wait_log("event=quarantined trigger=interval id=v2 serving_id=v1", 3);
    assert!(liveroll.get("/").unwrap().body.starts_with("version=v1 "));
}

#[test]
fn rollback_after_the_window_without_id_in_exec_is_refused_and_disturbs_nothing() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    let liveroll = Liveroll::start(&scratch, &["--admin-listen", &admin_addr]);
    liveroll.wait_version("v1");
    scratch.set_version("v2");
    liveroll.signal(Signal::SIGHUP);
    let v2 = liveroll.wait_version("v2");

    let answer = request(admin, "POST", "/rollback", b"").unwrap();
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert!(
        answer
            .body
            .contains("the bake window is over and --exec has no <<ID>>, so v1 cannot be started"),
        "{}",
        answer.body
    );
    let r = liveroll.get("/").unwrap();
    assert_eq!((r.status, r.demo_pid()), (200, v2));
    assert_eq!(demo_pids(&scratch), vec![v2]);
}

/// Not a test but a measurement (`cargo test --release --test rollback --
/// --ignored --nocapture measure`): ten bad versions in a row under a client
/// loop, with and without a canary. For each: the time from the first failed
/// response to the rollback line (logged once the previous child is
/// published again), and the requests that failed in between.
#[test]
#[ignore]
fn measure_time_to_rollback_and_failed_requests() {
    for canary in ["0", "10"] {
        let scratch = Scratch::new();
        let liveroll = Liveroll::start(&scratch, &["--bake", "1h", "--canary", canary]);
        liveroll.wait_version("v1");
        let (mut times, mut fails) = (Vec::new(), Vec::new());
        for round in 1..=10 {
            let client = Client::start(liveroll.ports.proxy);
            scratch.set_flags("--fail-rate 100");
            scratch.set_version(&format!("bad{round}"));
            liveroll.signal(Signal::SIGHUP);
            liveroll.wait_log("event=rolled-back", round);
            let answers = client.stop();
            let log = liveroll.log();
            let line = log
                .lines()
                .rfind(|l| l.contains("event=rolled-back"))
                .unwrap();
            let rolled_back = log_ms(line);
            let first_failure = answers
                .iter()
                .find(|(_, ok)| !ok)
                .map(|(at, _)| *at)
                .unwrap();
            let failed = answers
                .iter()
                .filter(|(at, ok)| !ok && *at <= rolled_back + 1)
                .count();
            times.push(rolled_back.saturating_sub(first_failure));
            fails.push(failed);
            scratch.set_flags("");
        }
        times.sort_unstable();
        fails.sort_unstable();
        eprintln!(
            "canary {canary}%: first failure -> rolled back: median {} ms (min {}, max {}); failed requests: median {} (min {}, max {})",
            times[5], times[0], times[9], fails[5], fails[0], fails[9]
        );
    }
}
