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
  0   done (wait: the update rolled or found nothing new, and liveroll is ready)
  1   the update failed, liveroll restarted while waiting, or liveroll refused
      the command (wrong token, not from loopback, nothing to roll back, ...)
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
    Status {
        /// Print /status as JSON, as liveroll sends it.
        #[arg(long)]
        json: bool,
    },
    /// Wait until an update after number N has finished (see `status`).
    Wait {
        /// The update number to wait beyond; default: the last one now.
        #[arg(long, value_name = "N")]
        after: Option<u64>,
        /// Give up (exit 2) after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Start a forced update (a restart even with the same ID), like SIGHUP.
    Rollover {
        /// Then wait until that update has finished, as `wait` does.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up (exit 2) after this long.
        #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
        timeout: Duration,
    },
    /// Go back to the previous version.
    Rollback,
    /// Stop interval updates (a crashed child is still replaced).
    Pause,
    /// Start interval updates again.
    Resume,
    /// End the bake window now: keep the new version.
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
        Action::Wait { after, timeout } => {
            let first = client.status()?;
            let after = after.unwrap_or_else(|| update_number(&first));
            wait(&client, &first, after, timeout)
        }
        Action::Rollover { wait: false, .. } => command(&client, "rollover").map(|_| ()),
        Action::Rollover {
            wait: true,
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
            wait(&client, &first, after, timeout)
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

/// Polls `/status` until an update numbered above `after` has finished.
fn wait(client: &Client, first: &Value, after: u64, timeout: Duration) -> Result<(), Failure> {
    let deadline = Instant::now() + timeout;
    let pid = first["pid"].as_u64();
    let mut last;
    loop {
        match client.status() {
            Ok(status) => {
                if status["pid"].as_u64() != pid {
                    return Err(refused(format!(
                        "liveroll restarted while waiting (pid {} is now {}); its update numbers start again",
                        pid.unwrap_or(0),
                        status["pid"]
                    )));
                }
                let update = &status["last_update"];
                let number = update_number(&status);
                if number > after {
                    let result = update["result"].as_str().unwrap_or("?");
                    let ready = status["ready"] == true;
                    let id = status["current_id"].as_str().unwrap_or("none");
                    match result {
                        "failed" => {
                            return Err(refused(format!(
                                "update {number} failed: step={} error={}",
                                update["step"].as_str().unwrap_or("?"),
                                update["error"]
                            )))
                        }
                        _ if ready => {
                            println!(
                                "update {number} {result} (trigger={}): serving {id}",
                                update["trigger"].as_str().unwrap_or("?")
                            );
                            return Ok(());
                        }
                        _ => last = format!("update {number} {result}, but liveroll is not ready"),
                    }
                } else {
                    last = format!("last update is {number}, waiting for one after {after}");
                }
            }
            Err(Failure(_, e)) => last = e,
        }
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
        line(&mut out, "bake", fields(bake, now));
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
        line(&mut out, "last rollback", fields(rollback, now));
    }
    out
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
            "bake": {"ends_at": "2025-01-01T10:05:00Z", "previous_id": "v1"},
            "last_rollback": {"at": "2025-01-01T09:00:00Z", "id": "v3", "reason": "error-rate"},
        });
        let text = summary(&status, at("2025-01-01T10:01:00Z"));
        let want = "\
current id:    v2
ready:         yes
paused:        yes (interval updates are skipped; `liveroll ctl resume`)
phase:         serving id=v2 port=9102 pid=4567
bake:          ends_at=in 4m previous_id=v1
children:
  SLOT  PORT  PID   ID  STATE    SINCE   STARTED    INFLIGHT
  2     9102  4567  v2  serving  1m ago  1m 1s ago  3
last update:   #7 trigger=admin result=failed 1m ago (took 17 ms)
               step=pull error=\"--pull failed: exit status: 1\"
rollouts:      3
last rollback: at=1h 1m ago id=v3 reason=error-rate
";
        assert_eq!(text, want, "\n{text}");
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
