//! The command line: bad input exits 2 naming the flag, a taken port fails
//! fast, and the environment can carry every flag.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

use common::*;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(LIVEROLL).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

const REQUIRED: [&str; 6] = ["--pull", "true", "--id", "echo 1", "--exec", "sleep 1"];

#[test]
fn bad_flags_exit_2_with_a_message_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--interval", "10"],
            "invalid value '10' for '--interval <DURATION>'",
        ),
        (&["--interval", "soon"], "for '--interval <DURATION>'"),
        (
            &["--interval", "0s"],
            "--interval must be greater than zero",
        ),
        (
            &["--health-timeout", "1parsec"],
            "for '--health-timeout <DURATION>'",
        ),
        (
            &["--drain-timeout", "x"],
            "for '--drain-timeout <DURATION>'",
        ),
        (&["--kill-timeout=-1s"], "for '--kill-timeout <DURATION>'"),
        (
            &["--child-port1", "9000", "--child-port2", "9000"],
            "--child-port1 and --child-port2 must differ (both are 9000)",
        ),
        (
            &["--port", "9101"],
            "--child-port1 must differ from --port (both are 9101)",
        ),
        (&["--port", "0"], "invalid value '0' for '--port <PORT>'"),
        (
            &["--child-port2", "0"],
            "invalid value '0' for '--child-port2 <CHILD_PORT2>'",
        ),
        (
            &["--port", "70000"],
            "invalid value '70000' for '--port <PORT>'",
        ),
        (
            &["--healthcheck", "healthz"],
            "invalid value 'healthz' for '--healthcheck <PATH>'",
        ),
        (&["--bind", "localhost:1"], "for '--bind <ADDR>'"),
        (&["-Interval", "10s"], "unexpected argument"),
    ];
    for (bad, want) in cases {
        let mut args = REQUIRED.to_vec();
        args.extend_from_slice(bad);
        let (code, text) = run(&args);
        assert_eq!(code, 2, "{bad:?}: {text}");
        assert!(text.contains(want), "{bad:?}: wanted {want:?} in {text}");
        assert_eq!(
            text.lines().next().unwrap().matches("error:").count(),
            1,
            "one error line: {text}"
        );
    }
}

#[test]
fn missing_commands_exit_2() {
    let (code, text) = run(&["--pull", "true", "--id", "echo 1"]);
    assert_eq!(code, 2);
    assert!(text.contains("--exec <CMD>"), "{text}");
    let (code, text) = run(&["--pull", " ", "--id", "echo 1", "--exec", "x"]);
    assert_eq!(code, 2);
    assert!(text.contains("--pull must not be empty"), "{text}");
}

#[test]
fn help_and_version() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--pull",
        "--id",
        "--exec",
        "--interval",
        "--healthcheck",
        "--health-timeout",
        "--drain-timeout",
        "--kill-timeout",
        "--command-timeout",
        "--port",
        "--bind",
        "--child-port1",
        "--child-port2",
        "--conf",
        "LIVEROLL_PULL",
        "[default: /healthz]",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
    let (code, text) = run(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        text.trim(),
        format!("liveroll {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_proxy_port_in_use_fails_fast_without_starting_children() {
    let scratch = Scratch::new();
    let ports = free_ports();
    let _squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, ports.proxy)).unwrap();
    let proxy = ports.proxy;
    let mut liveroll = Liveroll::start_on(&scratch, ports, &[]);
    let status = liveroll.wait_exit();
    assert_eq!(status.code(), Some(1), "{}", liveroll.log());
    let log = liveroll.log();
    assert!(
        log.contains(&format!(
            "error: cannot listen on 127.0.0.1:{proxy} (--port): Address already in use"
        )),
        "{log}"
    );
    assert!(!log.contains("event=spawn"), "no child was started: {log}");
}

#[test]
fn a_conf_file_that_cannot_be_read_fails_before_anything_starts() {
    let scratch = Scratch::new();
    let mut liveroll = Liveroll::start(&scratch, &["--conf", "/nonexistent/liveroll.yaml"]);
    assert_eq!(liveroll.wait_exit().code(), Some(1));
    assert!(
        liveroll
            .log()
            .contains("error: --conf /nonexistent/liveroll.yaml:"),
        "{}",
        liveroll.log()
    );
    assert!(!liveroll.log().contains("event=spawn"));
}

#[test]
fn every_flag_can_come_from_the_environment() {
    let scratch = Scratch::new();
    let ports = free_ports();
    let log = std::fs::File::create(scratch.path("env.log")).unwrap();
    let mut process = Command::new(LIVEROLL)
        .env("LIVEROLL_PULL", "true")
        .env("LIVEROLL_ID", scratch.id_cmd())
        .env("LIVEROLL_EXEC", scratch.exec_cmd())
        .env("LIVEROLL_PORT", ports.proxy.to_string())
        .env("LIVEROLL_BIND", "127.0.0.1")
        .env("LIVEROLL_CHILD_PORT1", ports.child1.to_string())
        .env("LIVEROLL_CHILD_PORT2", ports.child2.to_string())
        .env("LIVEROLL_HEALTHCHECK", "/healthz")
        .env("LIVEROLL_INTERVAL", "1h")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let served = wait_for("liveroll configured from the environment to serve", || {
        request(ports.proxy, "GET", "/", b"")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert!(served.body.starts_with("version=v1 "), "{}", served.body);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(process.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(process.wait().unwrap().success());
}
