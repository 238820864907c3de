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
    // The squatter takes a port the system picks, so nothing can take it first.
    let squatter = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let proxy = squatter.local_addr().unwrap().port();
    let ports = Ports {
        proxy,
        ..free_ports()
    };
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
    let admin = format!("127.0.0.1:{}", free_ports().proxy);
    let ready = format!("127.0.0.1:{}", free_ports().proxy);
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/liveroll.yaml");
    let env: Vec<(String, String)> = [
        ("PULL", "true".to_string()),
        ("ID", scratch.id_cmd()),
        ("EXEC", scratch.exec_cmd()),
        ("INTERVAL", "1h".into()),
        ("HEALTHCHECK", "/healthz".into()),
        ("HEALTH_TIMEOUT", "41s".into()),
        ("HEALTH_INTERVAL", "3s".into()),
        ("UNHEALTHY_THRESHOLD", "4".into()),
        ("HEALTHY_THRESHOLD", "5".into()),
        ("DRAIN_TIMEOUT", "7s".into()),
        ("KILL_TIMEOUT", "6s".into()),
        ("COMMAND_TIMEOUT", "2m".into()),
        ("HOLD_TIMEOUT", "9s".into()),
        ("MAX_HELD", "77".into()),
        ("SHUTDOWN_DELAY", "0s".into()),
        ("PORT", ports.proxy.to_string()),
        ("BIND", "127.0.0.1".into()),
        ("CHILD_PORT1", ports.child1.to_string()),
        ("CHILD_PORT2", ports.child2.to_string()),
        ("ADMIN_LISTEN", admin.clone()),
        ("READY_LISTEN", ready.clone()),
        ("ADMIN_TOKEN", "env-token".into()),
        ("STATUS_COMMANDS", "full".into()),
        ("ACCESS_LOG", "true".into()),
        ("CONF", conf.into()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("LIVEROLL_{k}"), v))
    .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proxy = ports.proxy;
    let liveroll = Liveroll::spawn(&scratch, ports, &[], &env);
    liveroll.wait_version("v1");
    let admin_port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();
    let ready_port: u16 = ready.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        request(ready_port, "GET", "/ready", b"").unwrap().status,
        200
    );
    assert_eq!(
        request(admin_port, "GET", "/status", b"").unwrap().status,
        401
    );
    let mut conn = Conn::open(admin_port).unwrap();
    conn.write_raw(b"GET /status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer env-token\r\n\r\n")
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&conn.read_response(false).unwrap().body).unwrap();
    let config = &status["config"];
    for (key, want) in [
        ("interval", "1h"),
        ("health_timeout", "41s"),
        ("health_interval", "3s"),
        ("drain_timeout", "7s"),
        ("kill_timeout", "6s"),
        ("command_timeout", "2m"),
        ("hold_timeout", "9s"),
        ("shutdown_delay", "0s"),
        ("admin_listen", admin.as_str()),
        ("ready_listen", ready.as_str()),
        ("status_commands", "full"),
        ("conf", conf),
        ("listen", &format!("127.0.0.1:{proxy}")),
    ] {
        assert_eq!(config[key], want, "{key} in {config:#}");
    }
    assert_eq!(config["max_held"], 77);
    assert_eq!(config["unhealthy_threshold"], 4);
    assert_eq!(config["healthy_threshold"], 5);
    assert_eq!(config["access_log"], true);
    assert_eq!(config["admin_token"], true);
    assert_eq!(config["exec"], scratch.exec_cmd());
}
