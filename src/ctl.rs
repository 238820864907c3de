//! `liveroll ctl`: a small client of a running liveroll's admin listener,
//! for a person at a terminal and for scripts that roll a fleet host by
//! host. Blocking HTTP/1.1 over one `std` TCP connection per request.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::config::{parse_duration, Secret};

const EXIT_CODES: &str = "\
Exit status:
  0   done (wait: the update rolled, and its bake window passed, or it found
      its ID already serving; and liveroll is ready)
  1   the update failed or was rolled back, its ID is quarantined, liveroll
      restarted while waiting, or liveroll refused the command (wrong token,
      not from loopback, nothing to roll back, ...)
  2   wait: timed out
  3   liveroll could not be reached, or its answer made no sense
  64  bad usage

Errors are one line on stderr, starting with \"liveroll ctl:\".";

/// Control a running liveroll through its admin listener (--admin-listen).
#[derive(Parser, Debug)]
#[command(
    name = "liveroll ctl",
    bin_name = "liveroll ctl",
    version,
    max_term_width = 100,
    after_help = EXIT_CODES
)]
pub struct Ctl {
    /// The admin listener of the liveroll to control (its --admin-listen,
    /// e.g. 127.0.0.1:9100).
    #[arg(
        long,
        env = "LIVEROLL_ADMIN_LISTEN",
        value_name = "ADDR",
        global = true
    )]
    admin: Option<String>,

    /// The admin token (liveroll's --admin-token).
    #[arg(
        long,
        env = "LIVEROLL_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file",
        global = true
    )]
    token: Option<Secret>,

    /// Read the token from this file (its first line).
    #[arg(
        long,
        env = "LIVEROLL_ADMIN_TOKEN_FILE",
        value_name = "PATH",
        global = true
    )]
    token_file: Option<PathBuf>,

    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// What liveroll is doing: current ID, children, last update and rollback.
    #[command(after_help = EXIT_CODES)]
    Status {
        /// Print /status as JSON, as liveroll sends it.
        #[arg(long)]
        json: bool,
    },
    /// Wait until an update after number N has finished (see `status`), and
    /// its bake window if it opened one.
    #[command(after_help = EXIT_CODES)]
    Wait {
        /// The update number to wait beyond; default: the last one now.
        #[arg(long, value_name = "N")]
        after: Option<u64>,
        /// Done once the new child serves: do not wait for its bake window
        /// (nor see it rolled back).
        #[arg(long)]
        no_bake: bool,
        /// Give up (exit 2) after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Start a forced update (a restart even with the same ID), like SIGHUP.
    #[command(after_help = EXIT_CODES)]
    Rollover {
        /// Then wait until that update has finished, as `wait` does.
        #[arg(long)]
        wait: bool,
        /// With --wait: done once the new child serves, without waiting for
        /// its bake window.
        #[arg(long)]
        no_bake: bool,
        /// With --wait: give up (exit 2) after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Go back to the previous version.
    #[command(after_help = EXIT_CODES)]
    Rollback,
    /// Stop interval updates (a crashed child is still replaced).
    #[command(after_help = EXIT_CODES)]
    Pause,
    /// Start interval updates again.
    #[command(after_help = EXIT_CODES)]
    Resume,
    /// End the bake window now: keep the new version.
    #[command(after_help = EXIT_CODES)]
    Promote,
}

/// Runs `liveroll ctl ARGS` (`args` starts with `ctl`); returns the exit status.
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let ctl = match Ctl::try_parse_from(args) {
        Ok(ctl) => ctl,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 64 } else { 0 };
        }
    };
    match run(ctl) {
        Ok(()) => 0,
        Err(Failure(code, message)) => {
            eprintln!("liveroll ctl: {message}");
            code
        }
    }
}

/// An exit status other than 0, and the line that says why.
#[derive(Debug)]
struct Failure(i32, String);

fn refused(message: String) -> Failure {
    Failure(1, message)
}

fn unreachable(message: String) -> Failure {
    Failure(3, message)
}

fn run(ctl: Ctl) -> Result<(), Failure> {
    let Some(admin) = ctl.admin else {
        return Err(Failure(
            64,
            "--admin ADDR (or LIVEROLL_ADMIN_LISTEN) is needed: the admin listener of the liveroll to control".into(),
        ));
    };
    let token = match (ctl.token, ctl.token_file) {
        (Some(token), _) => Some(token),
        (None, Some(path)) => Some(read_token(&path)?),
        (None, None) => None,
    };
    let client = Client { admin, token };
    match ctl.action {
        Action::Status { json: true } => {
            let (_, body) = client.get_status_text()?;
            print!("{body}");
            Ok(())
        }
        Action::Status { json: false } => {
            let status = client.status()?;
            print!("{}", summary(&status, SystemTime::now()));
            Ok(())
        }
        Action::Wait {
            after,
            no_bake,
            timeout,
        } => {
            let first = client.status()?;
            let after = after.unwrap_or_else(|| update_number(&first));
            wait(&client, &first, after, timeout, !no_bake)
        }
        Action::Rollover { wait: false, .. } => command(&client, "rollover").map(|_| ()),
        Action::Rollover {
            wait: true,
            no_bake,
            timeout,
        } => {
            // Read the number, ask, then wait for an update past it. The
            // answer names the update that carries this rollover, which
            // may be later than the next one if an update was running.
            let first = client.status()?;
            let answer = command(&client, "rollover")?;
            let promised = answer
                .rsplit(' ')
                .next()
                .and_then(|n| n.trim().parse::<u64>().ok());
            let after = update_number(&first).max(promised.map_or(0, |n| n.saturating_sub(1)));
            wait(&client, &first, after, timeout, !no_bake)
        }
        Action::Rollback => command(&client, "rollback").map(|_| ()),
        Action::Pause => command(&client, "pause").map(|_| ()),
        Action::Resume => command(&client, "resume").map(|_| ()),
        Action::Promote => command(&client, "promote").map(|_| ()),
    }
}

fn read_token(path: &std::path::Path) -> Result<Secret, Failure> {
    let what = format!("--token-file {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| Failure(64, format!("{what}: {e}")))?;
    let line = text.lines().next().unwrap_or("").trim();
    line.parse()
        .map_err(|e| Failure(64, format!("{what}: {e}")))
}

/// `POST /NAME`; prints liveroll's answer and returns it.
fn command(client: &Client, name: &str) -> Result<String, Failure> {
    // The engine answers some commands only between updates: give it time.
    let (code, body) = client.request("POST", &format!("/{name}"), Duration::from_secs(600))?;
    let body = body.trim().to_string();
    match code {
        200 => {
            println!("{body}");
            Ok(body)
        }
        400..=499 => Err(refused(format!("{name}: {body} (HTTP {code})"))),
        _ => Err(unreachable(format!("{name}: HTTP {code}: {body}"))),
    }
}

/// The number of the last update that finished (0: none yet).
fn update_number(status: &Value) -> u64 {
    status["last_update"]["number"].as_u64().unwrap_or(0)
}

/// Polls `/status` until an update numbered above `after` has finished
/// (and, with `bake`, its bake window too).
fn wait(
    client: &Client,
    first: &Value,
    after: u64,
    timeout: Duration,
    bake: bool,
) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let mut baked = false;
    loop {
        let last = match client.status() {
            Ok(status) => match judge(&status, first, after, bake, &mut baked) {
                Verdict::Done(text) => {
                    println!("{text}");
                    return Ok(());
                }
                Verdict::Failed(text) => return Err(refused(text)),
                Verdict::Pending(text) => text,
            },
            Err(Failure(_, e)) => e,
        };
        if Instant::now() >= deadline {
            return Err(Failure(
                2,
                format!(
                    "timed out after {}: {last}",
                    humantime::format_duration(timeout)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How the wait stands.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Rolled, or found its ID serving, and liveroll is ready.
    Done(String),
    Failed(String),
    /// Still waiting, and for what.
    Pending(String),
}

/// What `status` says of the first update numbered above `after`; `first`
/// is `/status` as it was when the wait began. With `bake`, an update that
/// opened a bake window is done once the window passed, and failed if it
/// was rolled back; `baked` remembers that a window was seen open.
fn judge(status: &Value, first: &Value, after: u64, bake: bool, baked: &mut bool) -> Verdict {
    if status["pid"] != first["pid"] {
        return Verdict::Failed(format!(
            "liveroll restarted while waiting (pid {} is now {}); its update numbers start again",
            first["pid"], status["pid"]
        ));
    }
    let number = update_number(status);
    if number <= after {
        return Verdict::Pending(format!(
            "last update is {number}, waiting for one after {after}"
        ));
    }
    let update = &status["last_update"];
    let result = update["result"].as_str().unwrap_or("?");
    let id = status["current_id"].as_str().unwrap_or("none");
    match result {
        "failed" => {
            return Verdict::Failed(format!(
                "update {number} failed: step={} error={}",
                update["step"].as_str().unwrap_or("?"),
                update["error"]
            ))
        }
        "quarantined" => {
            return Verdict::Failed(format!(
                "update {number} did not roll: the ID --id printed was rolled back from and is quarantined (`liveroll ctl rollover` starts it anyway); serving {id}"
            ))
        }
        _ => {}
    }
    if bake && result == "rolled" {
        let window = &status["bake"];
        if !window.is_null() {
            *baked = true;
            let left = window["ends_in_ms"].as_u64().map_or("?".into(), |ms| {
                humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
            });
            return Verdict::Pending(format!(
                "update {number} rolled to {}; its bake window ends in {left}",
                text(&window["id"])
            ));
        }
        let rollback = &status["last_rollback"];
        if !rollback.is_null() && *rollback != first["last_rollback"] {
            return Verdict::Failed(format!(
                "update {number} rolled to {}, then rolled back ({}): serving {id}",
                text(&rollback["id"]),
                text(&rollback["reason"])
            ));
        }
    }
    if status["ready"] != true {
        return Verdict::Pending(format!(
            "update {number} {result}, but liveroll is not ready"
        ));
    }
    let passed = if *baked { ", bake window passed" } else { "" };
    Verdict::Done(format!(
        "update {number} {result} (trigger={}): serving {id}{passed}",
        text(&update["trigger"])
    ))
}

/// `/status` for a person.
fn summary(status: &Value, now: SystemTime) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, value: String| {
        out.push_str(&format!("{:<15}{value}\n", format!("{label}:")));
    };
    let yes_no = |v: &Value| if v == &Value::Bool(true) { "yes" } else { "no" };
    line(
        &mut out,
        "current id",
        status["current_id"].as_str().unwrap_or("none").into(),
    );
    line(&mut out, "ready", yes_no(&status["ready"]).into());
    let paused = match status["paused"] == true {
        true => "yes (interval updates are skipped; `liveroll ctl resume`)",
        false => "no",
    };
    line(&mut out, "paused", paused.into());
    line(&mut out, "phase", text(&status["phase"]));
    if let Some(bake) = status.get("bake").filter(|b| !b.is_null()) {
        line(&mut out, "bake", bake_text(bake, now));
    }
    let children = status["children"].as_array().cloned().unwrap_or_default();
    if children.is_empty() {
        line(&mut out, "children", "none".into());
    } else {
        out.push_str("children:\n");
        let header = [
            "SLOT", "PORT", "PID", "ID", "STATE", "SINCE", "STARTED", "INFLIGHT",
        ];
        let rows: Vec<Vec<String>> = children
            .iter()
            .map(|c| {
                vec![
                    text(&c["slot"]),
                    text(&c["port"]),
                    text(&c["pid"]),
                    text(&c["id"]),
                    text(&c["state"]),
                    ago(&c["since"], now),
                    ago(&c["started_at"], now),
                    text(&c["inflight"]),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(&format!("  {}\n", cells.join("  ").trim_end()));
        }
    }
    let update = &status["last_update"];
    if update.is_null() {
        line(&mut out, "last update", "none yet".into());
    } else {
        let mut text_ = format!(
            "#{} trigger={} result={} {} (took {} ms)",
            text(&update["number"]),
            text(&update["trigger"]),
            text(&update["result"]),
            ago(&update["at"], now),
            text(&update["duration_ms"]),
        );
        if !update["error"].is_null() {
            text_.push_str(&format!(
                "\n{:15}step={} error={}",
                "",
                update["step"].as_str().unwrap_or("?"),
                update["error"]
            ));
        }
        line(&mut out, "last update", text_);
    }
    line(&mut out, "rollouts", text(&status["rollouts"]));
    if let Some(rollback) = status.get("last_rollback").filter(|r| !r.is_null()) {
        line(&mut out, "last rollback", rollback_text(rollback, now));
    }
    out
}

/// An open bake window: `{id, previous_id, ends_in_ms, canary_percent}`.
fn bake_text(bake: &Value, now: SystemTime) -> String {
    let (Some(id), Some(previous), Some(ms)) = (
        bake["id"].as_str(),
        bake["previous_id"].as_str(),
        bake["ends_in_ms"].as_u64(),
    ) else {
        return fields(bake, now);
    };
    let left = humantime::format_duration(Duration::from_secs(ms.div_ceil(1000)));
    let canary = match bake["canary_percent"].as_f64() {
        Some(p) => format!(", canary {p}% of clients"),
        None => String::new(),
    };
    format!("{id} on trial, {previous} kept warm, {left} left{canary}")
}

/// The last rollback: `{at, id, previous_id, reason, evidence}`.
fn rollback_text(rollback: &Value, now: SystemTime) -> String {
    let (Some(id), Some(previous), Some(reason)) = (
        rollback["id"].as_str(),
        rollback["previous_id"].as_str(),
        rollback["reason"].as_str(),
    ) else {
        return fields(rollback, now);
    };
    let mut text = format!(
        "{id} -> {previous} {} ({reason})",
        ago(&rollback["at"], now)
    );
    if let Some(evidence) = rollback["evidence"].as_str().filter(|e| !e.is_empty()) {
        text.push_str(&format!("\n{:15}{evidence}", ""));
    }
    text
}

/// A JSON value as plain text (strings without quotes).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// An object's fields as `key=value`, times as "… ago".
fn fields(value: &Value, now: SystemTime) -> String {
    match value.as_object() {
        Some(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v.as_str() {
                Some(s) if humantime::parse_rfc3339(s).is_ok() => format!("{k}={}", ago(v, now)),
                _ => format!("{k}={}", text(v)),
            })
            .collect::<Vec<_>>()
            .join(" "),
        None => text(value),
    }
}

/// An RFC 3339 time as "12s ago" (or "in 12s").
fn ago(value: &Value, now: SystemTime) -> String {
    let Some(at) = value
        .as_str()
        .and_then(|s| humantime::parse_rfc3339(s).ok())
    else {
        return text(value);
    };
    let round = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
    match now.duration_since(at) {
        Ok(d) => format!("{} ago", round(d)).replace("0s ago", "just now"),
        Err(e) => format!("in {}", round(e.duration())),
    }
}

struct Client {
    admin: String,
    token: Option<Secret>,
}

impl Client {
    fn status(&self) -> Result<Value, Failure> {
        let (code, body) = self.get_status_text()?;
        serde_json::from_str(&body)
            .map_err(|e| unreachable(format!("GET /status (HTTP {code}): not JSON: {e}")))
    }

    fn get_status_text(&self) -> Result<(u16, String), Failure> {
        let (code, body) = self.request("GET", "/status", Duration::from_secs(30))?;
        match code {
            200 => Ok((code, body)),
            400..=499 => Err(refused(format!(
                "GET /status: {} (HTTP {code})",
                body.trim()
            ))),
            _ => Err(unreachable(format!(
                "GET /status: HTTP {code}: {}",
                body.trim()
            ))),
        }
    }

    /// One request on a new connection; the status code and the body.
    fn request(
        &self,
        method: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, String), Failure> {
        let fail = |e: String| unreachable(format!("{method} {path} on {}: {e}", self.admin));
        let host = self
            .admin
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let addr = host
            .to_socket_addrs()
            .map_err(|e| fail(format!("not an address ({e})")))?
            .next()
            .ok_or_else(|| fail("no address".into()))?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| fail(e.to_string()))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| fail(e.to_string()))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: liveroll-ctl\r\nContent-Length: 0\r\nConnection: close\r\n"
        );
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {}\r\n", token.expose()));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .map_err(|e| fail(e.to_string()))?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&answer) {
            Ok(httparse::Status::Complete(len)) => {
                let code = response.code.unwrap_or(0);
                Ok((code, String::from_utf8_lossy(&answer[len..]).into_owned()))
            }
            _ => Err(fail("no HTTP answer".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn the_summary_reads_like_a_report() {
        let status = json!({
            "pid": 42,
            "current_id": "v2",
            "ready": true,
            "paused": true,
            "phase": "serving id=v2 port=9102 pid=4567",
            "children": [{
                "slot": 2, "port": 9102, "pid": 4567, "id": "v2", "state": "serving",
                "since": "2025-01-01T10:00:00Z", "started_at": "2025-01-01T09:59:59Z", "inflight": 3
            }],
            "last_update": {
                "number": 7, "at": "2025-01-01T10:00:00Z", "trigger": "admin",
                "result": "failed", "step": "pull", "error": "--pull failed: exit status: 1",
                "duration_ms": 17
            },
            "rollouts": 3,
            "bake": {"id": "v2", "previous_id": "v1", "ends_in_ms": 11200, "canary_percent": 10.0},
            "last_rollback": {"at": "2025-01-01T09:00:00Z", "id": "v3", "previous_id": "v2",
                "reason": "error-rate", "evidence": "new=\"requests=40 errors=20\" previous=none"},
        });
        let text = summary(&status, at("2025-01-01T10:01:00Z"));
        let want = "\
current id:    v2
ready:         yes
paused:        yes (interval updates are skipped; `liveroll ctl resume`)
phase:         serving id=v2 port=9102 pid=4567
bake:          v2 on trial, v1 kept warm, 12s left, canary 10% of clients
children:
  SLOT  PORT  PID   ID  STATE    SINCE   STARTED    INFLIGHT
  2     9102  4567  v2  serving  1m ago  1m 1s ago  3
last update:   #7 trigger=admin result=failed 1m ago (took 17 ms)
               step=pull error=\"--pull failed: exit status: 1\"
rollouts:      3
last rollback: v3 -> v2 1h 1m ago (error-rate)
               new=\"requests=40 errors=20\" previous=none
";
        assert_eq!(text, want, "\n{text}");
    }

    #[test]
    fn the_summary_takes_objects_of_another_shape() {
        let status = json!({"bake": {"ends_at": "2025-01-01T10:05:00Z", "x": 1}, "children": []});
        let text = summary(&status, at("2025-01-01T10:01:00Z"));
        assert!(
            text.contains("bake:          ends_at=in 4m x=1\n"),
            "{text}"
        );
    }

    /// `/status` with update `number` as the last one.
    fn status(number: u64, result: &str, ready: bool) -> Value {
        json!({
            "pid": 42, "current_id": "v2", "ready": ready, "bake": null, "last_rollback": null,
            "last_update": {"number": number, "trigger": "admin", "result": result,
                "step": "pull", "error": "--pull failed"},
        })
    }

    #[test]
    fn a_wait_ends_with_the_update_after_n() {
        let first = status(3, "rolled", true);
        let judge = |s: &Value| judge(s, &first, 3, true, &mut false);
        assert_eq!(
            judge(&status(3, "rolled", true)),
            Verdict::Pending("last update is 3, waiting for one after 3".into())
        );
        assert_eq!(
            judge(&status(4, "rolled", true)),
            Verdict::Done("update 4 rolled (trigger=admin): serving v2".into())
        );
        assert_eq!(
            judge(&status(5, "unchanged", true)),
            Verdict::Done("update 5 unchanged (trigger=admin): serving v2".into())
        );
        assert!(matches!(
            judge(&status(4, "rolled", false)),
            Verdict::Pending(_)
        ));
        assert_eq!(
            judge(&status(4, "failed", true)),
            Verdict::Failed("update 4 failed: step=pull error=\"--pull failed\"".into())
        );
        assert!(matches!(
            judge(&status(4, "quarantined", true)),
            Verdict::Failed(_)
        ));
        let mut restarted = status(4, "rolled", true);
        restarted["pid"] = json!(43);
        assert!(
            matches!(judge(&restarted), Verdict::Failed(t) if t.starts_with("liveroll restarted"))
        );
    }

    #[test]
    fn with_a_bake_window_a_wait_ends_when_it_does() {
        let first = status(3, "rolled", true);
        let mut baked = false;
        let mut baking = status(4, "rolled", true);
        baking["bake"] = json!({"id": "v2", "previous_id": "v1", "ends_in_ms": 1500});
        assert_eq!(
            judge(&baking, &first, 3, true, &mut baked),
            Verdict::Pending("update 4 rolled to v2; its bake window ends in 2s".into())
        );
        assert!(baked);
        // Without waiting for the bake, it is done.
        assert!(matches!(
            judge(&baking, &first, 3, false, &mut false),
            Verdict::Done(_)
        ));
        // The window passed.
        assert_eq!(
            judge(&status(4, "rolled", true), &first, 3, true, &mut baked),
            Verdict::Done("update 4 rolled (trigger=admin): serving v2, bake window passed".into())
        );
        // Or it was rolled back.
        let mut back = status(4, "rolled", true);
        back["current_id"] = json!("v1");
        back["last_rollback"] = json!({"id": "v2", "previous_id": "v1", "reason": "crashed"});
        assert_eq!(
            judge(&back, &first, 3, true, &mut baked),
            Verdict::Failed("update 4 rolled to v2, then rolled back (crashed): serving v1".into())
        );
        // A rollback from before the wait began is not this update's.
        let mut earlier = first.clone();
        earlier["last_rollback"] = back["last_rollback"].clone();
        let mut now = status(4, "rolled", true);
        now["last_rollback"] = back["last_rollback"].clone();
        assert!(matches!(
            judge(&now, &earlier, 3, true, &mut false),
            Verdict::Done(_)
        ));
    }

    #[test]
    fn an_empty_status_says_so() {
        let status = json!({"current_id": null, "ready": false, "paused": false,
            "phase": "", "children": [], "last_update": null, "rollouts": 0});
        let text = summary(&status, SystemTime::now());
        assert!(text.contains("current id:    none\n"), "{text}");
        assert!(text.contains("children:      none\n"), "{text}");
        assert!(text.contains("last update:   none yet\n"), "{text}");
        assert!(!text.contains("bake"), "{text}");
    }

    #[test]
    fn usage_errors_exit_64_and_help_exits_0() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(main(args(&["ctl", "frobnicate"])), 64);
        assert_eq!(main(args(&["ctl", "wait", "--timeout", "soon"])), 64);
        assert_eq!(main(args(&["ctl", "--help"])), 0);
    }
}
