//! The operator's side: the readiness listener, the admin token, commands
//! from loopback only without one, secrets kept out of /status, pause and
//! resume, rollovers over POST and `liveroll ctl`, and ctl's exit codes.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::thread;

use common::netns::skip_or_fail;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// One request with extra headers to `addr`, on a new connection.
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: liveroll\r\nContent-Length: 0\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let mut parsed_headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut parsed_headers);
    let len = match parsed.parse(&answer).unwrap() {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => panic!("half an answer: {answer:?}"),
    };
    Response {
        status: parsed.code.unwrap(),
        headers: parsed
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect(),
        body: String::from_utf8_lossy(&answer[len..]).into_owned(),
    }
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

fn status(admin: u16) -> Value {
    let r = http(local(admin), "GET", "/status", &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// Waits until `/status` shows update `number` as the last one finished
/// (a child may serve a moment before its update has reported its end).
fn wait_update(admin: u16, number: u64) -> Value {
    wait_for(&format!("update {number} in /status"), || {
        let status = status(admin);
        (status["last_update"]["number"] == number).then_some(status)
    })
}

/// `liveroll ctl ARGS`: exit status, stdout, stderr.
fn ctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(LIVEROLL)
        .arg("ctl")
        .args(args)
        .env_remove("LIVEROLL_ADMIN_LISTEN")
        .env_remove("LIVEROLL_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_ready_listener_serves_ready_alone_and_answers_during_shutdown() {
    let scratch = Scratch::new();
    scratch.set_flags("--start-delay 3s");
    let (ready, ready_addr) = admin_address();
    let mut liveroll = Liveroll::start(&scratch, &["--ready-listen", &ready_addr]);
    // Starting: not ready yet (the child sleeps before it listens).
    liveroll.wait_log("event=spawn", 1);
    let starting = http(local(ready), "GET", "/ready", &[]);
    assert!(
        !liveroll.log().contains("event=publish"),
        "checked before the child was healthy"
    );
    assert_eq!(starting.status, 503);

    liveroll.wait_version("v1");
    assert_eq!(http(local(ready), "GET", "/ready", &[]).status, 200);
    let head = http(local(ready), "HEAD", "/ready", &[]);
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    for path in ["/status", "/metrics", "/", "/pause"] {
        assert_eq!(http(local(ready), "GET", path, &[]).status, 404, "{path}");
        assert_eq!(http(local(ready), "POST", path, &[]).status, 404, "{path}");
    }
    let post = http(local(ready), "POST", "/ready", &[]);
    assert_eq!(
        (post.status, post.header("allow")),
        (405, Some("GET, HEAD"))
    );

    // While it drains at shutdown, /ready says 503 and still answers.
    let port = liveroll.ports.proxy;
    let slow = thread::spawn(move || request(port, "GET", "/slow?ms=1500", b""));
    liveroll.wait_log("slow request started", 1);
    liveroll.signal(Signal::SIGTERM);
    wait_for("/ready to say 503 during the drain", || {
        request(ready, "GET", "/ready", b"")
            .ok()
            .filter(|r| r.status == 503)
    });
    assert_eq!(slow.join().unwrap().unwrap().status, 200);
    assert_eq!(liveroll.wait_exit().code(), Some(0));
}

#[test]
fn a_ready_address_in_use_fails_fast() {
    let scratch = Scratch::new();
    let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut liveroll = Liveroll::start(&scratch, &["--ready-listen", &addr]);
    assert_eq!(liveroll.wait_exit().code(), Some(1));
    assert!(
        liveroll
            .log()
            .contains(&format!("error: cannot listen on {addr} (--ready-listen)")),
        "{}",
        liveroll.log()
    );
    assert!(!liveroll.log().contains("event=spawn"));
}

#[test]
fn a_token_guards_everything_but_ready() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    scratch.write("token", "T0ken-of-the-test\n");
    let token_file = scratch.path("token").display().to_string();
    let liveroll = Liveroll::start(
        &scratch,
        &[
            "--admin-listen",
            &admin_addr,
            "--admin-token-file",
            &token_file,
        ],
    );
    liveroll.wait_version("v1");
    let at = local(admin);
    assert_eq!(http(at, "GET", "/ready", &[]).status, 200);
    for auth in [None, Some("Bearer wrong"), Some("Basic T0ken-of-the-test")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
        for (method, path) in [("GET", "/status"), ("GET", "/metrics"), ("POST", "/pause")] {
            let r = http(at, method, path, &headers);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"liveroll\"")
            );
        }
    }
    let good = [("Authorization", "Bearer T0ken-of-the-test")];
    let r = http(at, "GET", "/status", &good);
    assert_eq!(r.status, 200);
    assert!(
        !r.body.contains("T0ken"),
        "the token in /status: {}",
        r.body
    );
    assert_eq!(http(at, "GET", "/metrics", &good).status, 200);
    let paused = http(at, "POST", "/pause", &good);
    assert_eq!(paused.status, 200, "{}", paused.body);

    // ctl takes the token from a flag, a file or the environment.
    let (code, _, err) = ctl(&["status", "--admin", &admin_addr]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("liveroll ctl: GET /status: missing or wrong token"),
        "{err}"
    );
    assert!(err.contains("(HTTP 401)"), "{err}");
    let (code, out, err) = ctl(&[
        "status",
        "--admin",
        &admin_addr,
        "--token-file",
        &token_file,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paused:        yes"), "{out}");
    let (code, out, err) = ctl(&[
        "resume",
        "--admin",
        &admin_addr,
        "--token",
        "T0ken-of-the-test",
    ]);
    assert_eq!(
        (code, out.trim()),
        (0, "automatic updates resumed"),
        "{err}"
    );
}

/// An address of this machine that is not loopback (eth0's, docker0's).
fn non_loopback_address() -> Option<IpAddr> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .next()
}

#[test]
fn without_a_token_commands_come_from_loopback_only() {
    let Some(ip) = non_loopback_address() else {
        skip_or_fail("this machine has no address besides loopback");
        return;
    };
    let scratch = Scratch::new();
    let (port, _) = admin_address();
    let addr = SocketAddr::new(ip, port);
    let liveroll = Liveroll::start(&scratch, &["--admin-listen", &addr.to_string()]);
    liveroll.wait_version("v1");
    // Connected to that address, this client is not loopback to liveroll.
    let refused = http(addr, "POST", "/rollover", &[]);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("--admin-token"), "{}", refused.body);
    assert!(
        !liveroll.log().contains("event=command"),
        "{}",
        liveroll.log()
    );
    // Reading is not a command.
    assert_eq!(http(addr, "GET", "/status", &[]).status, 200);
    assert_eq!(http(addr, "GET", "/ready", &[]).status, 200);
}

#[test]
fn status_shows_the_commands_without_their_secrets() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    let pull = "REGISTRY_PASSWORD=hunter2 echo https://deploy:ghp_url@example.com/x >/dev/null";
    let id = format!("TOKEN=tok123 {}", scratch.id_cmd());
    let exec = format!("DB_PASSWORD=pw456 {}", scratch.exec_cmd());
    let stop = "true --password pw789 -H 'Authorization: Bearer eyJ0b2s'";
    let liveroll = Liveroll::start(
        &scratch,
        &[
            "--admin-listen",
            &admin_addr,
            "--pull",
            pull,
            "--id",
            &id,
            "--exec",
            &exec,
            "--stop",
            stop,
        ],
    );
    liveroll.wait_version("v1");
    let body = http(local(admin), "GET", "/status", &[]).body;
    for secret in ["hunter2", "ghp_url", "tok123", "pw456", "pw789", "eyJ0b2s"] {
        assert!(!body.contains(secret), "{secret} in /status:\n{body}");
    }
    let config = &serde_json::from_str::<Value>(&body).unwrap()["config"];
    assert_eq!(
        config["pull"],
        "REGISTRY_PASSWORD=*** echo https://deploy:***@example.com/x >/dev/null"
    );
    assert_eq!(
        config["exec"],
        format!("DB_PASSWORD=*** {}", scratch.exec_cmd())
    );
    assert_eq!(
        config["stop"],
        "true --password *** -H 'Authorization: Bearer ***'"
    );
    assert_eq!(config["status_commands"], "redacted");
}

#[test]
fn pause_skips_interval_updates_but_not_replacements_and_resume_ends_it() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    let liveroll = Liveroll::start(
        &scratch,
        &["--admin-listen", &admin_addr, "--interval", "100ms"],
    );
    let pid = liveroll.wait_version("v1");
    let post = |path| http(local(admin), "POST", path, &[]);
    const SKIPPED: &str = "event=skipped trigger=interval reason=paused";
    let skipped = || liveroll.log().matches(SKIPPED).count();

    let paused = post("/pause");
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert!(paused.body.contains("paused"), "{}", paused.body);
    assert_eq!(status(admin)["paused"], true);

    // Interval ticks are skipped from now on (once this one is, any update
    // that was under way is over).
    liveroll.wait_log(SKIPPED, 1);
    // A crashed child is still replaced while paused.
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    liveroll.wait_log("event=rolled trigger=child-exit", 1);
    let pid = liveroll.wait_pid_change(pid);

    // A new version is not rolled to, tick after tick.
    scratch.set_version("v2");
    let seen = skipped();
    liveroll.wait_log(SKIPPED, seen + 5);
    assert!(!liveroll.log().contains("id=v2"), "{}", liveroll.log());
    assert_eq!(liveroll.get("/").unwrap().demo_pid(), pid);
    assert_eq!(status(admin)["current_id"], "v1");

    let resumed = post("/resume");
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    liveroll.wait_version("v2");
    liveroll.wait_log("event=rolled trigger=interval", 1);
    assert_eq!(status(admin)["paused"], false);
}

#[test]
fn rollover_over_post_and_ctl_rollover_wait() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    let liveroll = Liveroll::start(&scratch, &["--admin-listen", &admin_addr]);
    let first = liveroll.wait_version("v1");
    let before = wait_update(admin, 1);
    assert_eq!(before["last_update"]["trigger"], "startup");
    assert_eq!(before["rollouts"], 1);
    let started_at = before["children"][0]["started_at"].clone();
    assert!(started_at.is_string(), "{before:#}");

    // Other methods on a command are refused.
    let get = http(local(admin), "GET", "/rollover", &[]);
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));

    let answer = http(local(admin), "POST", "/rollover", &[]);
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "rollover requested: update 2\n")
    );
    let second = liveroll.wait_pid_change(first);
    // Forced: the same ID, a new child.
    liveroll.wait_log("event=rolled trigger=admin id=v1", 1);
    let after = wait_update(admin, 2);
    assert_eq!(after["last_update"]["trigger"], "admin");
    assert_eq!(after["last_update"]["result"], "rolled");
    assert_eq!(after["rollouts"], 2);

    // ctl rollover --wait returns once the update is over: a new child
    // serves and the old one is gone.
    let (code, out, err) = ctl(&["rollover", "--wait", "--admin", &admin_addr]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "rollover requested: update 3\nupdate 3 rolled (trigger=admin): serving v1\n"
    );
    let done = status(admin);
    assert_eq!(done["last_update"]["number"], 3, "{done:#}");
    let children = done["children"].as_array().unwrap();
    assert_eq!(children.len(), 1, "{done:#}");
    assert_eq!(children[0]["state"], "serving");
    assert_ne!(children[0]["pid"], second);
    assert_ne!(children[0]["started_at"], Value::Null);
    let demos = demo_pids(&scratch);
    assert_eq!(demos.len(), 1, "{demos:?}");
    assert!(!demos.contains(&second));

    // What a person reads.
    let (code, out, err) = ctl(&["status", "--admin", &admin_addr]);
    assert_eq!(code, 0, "{err}");
    for want in [
        "current id:    v1\n",
        "ready:         yes\n",
        "paused:        no\n",
        "last update:   #3 trigger=admin result=rolled",
        "rollouts:      3\n",
    ] {
        assert!(out.contains(want), "no {want:?} in\n{out}");
    }
    // The children's table: a header, then one row for the child.
    let child = &children[0];
    let row: Vec<String> = [&child["slot"], &child["port"], &child["pid"]]
        .iter()
        .map(|v| v.to_string())
        .chain(["v1".into(), "serving".into()])
        .collect();
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip_while(|l| *l != "children:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0][..3], ["SLOT", "PORT", "PID"], "{out}");
    assert_eq!(rows[1][..5], row, "{out}");
    let (code, out, _) = ctl(&["status", "--json", "--admin", &admin_addr]);
    assert_eq!(code, 0);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["last_update"]["number"], 3);
}

#[test]
fn ctl_wait_exits_1_on_a_failed_update_2_on_timeout_3_when_unreachable() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    let fail = scratch.path("fail");
    let pull = format!("test ! -e {}", fail.display());
    let liveroll = Liveroll::start(&scratch, &["--admin-listen", &admin_addr, "--pull", &pull]);
    liveroll.wait_version("v1");
    wait_update(admin, 1);

    // Nothing happens (a 1-hour interval): the wait times out.
    let (code, _, err) = ctl(&["wait", "--timeout", "300ms", "--admin", &admin_addr]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with("liveroll ctl: timed out after 300ms: last update is 1"),
        "{err}"
    );

    scratch.write("fail", "");
    let (code, out, err) = ctl(&["rollover", "--wait", "--admin", &admin_addr]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out, "rollover requested: update 2\n");
    assert!(
        err.starts_with("liveroll ctl: update 2 failed: step=pull error=\"--pull failed"),
        "{err}"
    );
    // The old child still serves; a wait for what came after update 1 says
    // at once how it ended.
    liveroll.wait_version("v1");
    let (code, _, err) = ctl(&["wait", "--after", "1", "--admin", &admin_addr]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(status(admin)["last_update"]["result"], "failed");

    // Nothing listens there.
    let (closed, closed_addr) = admin_address();
    assert!(port_is_free(closed));
    let (code, _, err) = ctl(&["status", "--admin", &closed_addr]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.starts_with(&format!("liveroll ctl: GET /status on {closed_addr}: ")),
        "{err}"
    );
    // Bad usage.
    let (code, _, err) = ctl(&["status"]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--admin ADDR"), "{err}");
}

#[test]
fn ctl_rollover_wait_waits_out_the_bake_window() {
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    // The window passes (no traffic, no breach): done, the previous child gone.
    let liveroll = Liveroll::start(&scratch, &["--admin-listen", &admin_addr, "--bake", "2s"]);
    let first = liveroll.wait_version("v1");
    wait_update(admin, 1);
    scratch.set_version("v2");
    let (code, out, err) = ctl(&["rollover", "--wait", "--admin", &admin_addr]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "rollover requested: update 2\nupdate 2 rolled (trigger=admin): serving v2, bake window passed\n"
    );
    assert!(liveroll
        .log()
        .contains("event=promoted id=v2 previous_id=v1 reason=passed"));
    let done = status(admin);
    assert_eq!(done["children"].as_array().unwrap().len(), 1, "{done:#}");
    assert!(process_gone(first), "the previous demo {first} still runs");
    drop(liveroll);

    // The new version crashes during the window: rolled back, exit 1.
    let scratch = Scratch::new();
    let (admin, admin_addr) = admin_address();
    let liveroll = Liveroll::start(&scratch, &["--admin-listen", &admin_addr, "--bake", "1h"]);
    let old = liveroll.wait_version("v1");
    wait_update(admin, 1);
    scratch.set_version("v2");
    let waiting = {
        let admin_addr = admin_addr.clone();
        thread::spawn(move || ctl(&["rollover", "--wait", "--admin", &admin_addr]))
    };
    liveroll.wait_log("event=bake id=v2 previous_id=v1", 1);
    let new = liveroll.wait_version("v2");
    kill(Pid::from_raw(new), Signal::SIGKILL).unwrap();
    let (code, out, err) = waiting.join().unwrap();
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out, "rollover requested: update 2\n");
    assert_eq!(
        err,
        "liveroll ctl: update 2 rolled to v2, then rolled back (crashed): serving v1\n"
    );
    // Back to the warm child: no cold start.
    assert_eq!(liveroll.wait_version("v1"), old);
}
