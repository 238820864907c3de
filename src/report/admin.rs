//! The admin listener (`--admin-listen`): `/metrics`, `/status` and `/ready`,
//! and the operator commands (`POST /rollover`, `/pause`, `/resume`,
//! `/rollback`, `/promote`); and the readiness listener (`--ready-listen`),
//! which serves `/ready` and nothing else, for a load balancer.
//!
//! Both run in the supervisor's runtime rather than as Pingora services, so
//! they keep answering while the proxy drains at shutdown: `/ready` then
//! says 503, which is what a load balancer in front needs to see.
//!
//! With `--admin-token`, every request but `/ready` must carry
//! `Authorization: Bearer TOKEN`. Without one, commands are taken from
//! loopback clients only: anyone who can reach the port could otherwise
//! restart the app.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use log::debug;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::{Live, METRICS};
use super::reporter::Reporter;
use crate::config::Secret;
use crate::serve::backends::BackendSet;
use crate::serve::connections::Connections;
use crate::update::control::{Command, Control};

const MAX_REQUEST: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The listeners bound in `main` (so a taken port fails before anything
/// starts), served once the supervisor runs.
#[derive(Default)]
pub struct Listeners {
    pub admin: Option<std::net::TcpListener>,
    pub ready: Option<std::net::TcpListener>,
}

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `--admin-listen`: everything.
    Admin,
    /// `--ready-listen`: `/ready` only.
    Ready,
}

/// What one listener needs to answer.
pub struct Handler {
    pub scope: Scope,
    pub reporter: Arc<Reporter>,
    pub backends: Arc<BackendSet>,
    pub control: Control,
    pub token: Option<Secret>,
}

/// Serves until this process hands over to a new one: from then on the new
/// process answers on the same socket (it inherited it), so a load
/// balancer's `/ready` never meets this one draining.
/// Each answer is counted in `answers` until written, so that a process
/// that handed over does not exit before it answered (`POST /upgrade`'s
/// own answer among them).
pub async fn serve(
    listener: TcpListener,
    handler: Arc<Handler>,
    mut stop: tokio::sync::watch::Receiver<crate::signals::Stop>,
    answers: Arc<Connections>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s == crate::signals::Stop::HandedOver) => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let counted = answers.track();
                let handler = handler.clone();
                tokio::spawn(async move {
                    answer(stream, peer, handler).await;
                    drop(counted);
                });
            }
            Err(e) => {
                // E.g. out of file descriptors: do not spin on it.
                debug!("event=admin_accept_failed error={:?}", e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, peer: SocketAddr, handler: Arc<Handler>) {
    let Ok(Some(head)) = tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await else {
        return;
    };
    let action = decide(
        handler.scope,
        &head.method,
        &head.path,
        head.authorization.as_deref(),
        handler.token.as_ref(),
        peer.ip(),
    );
    let reply = match action {
        Action::Ready if handler.reporter.ready() => Reply::text(200, "ready"),
        Action::Ready => Reply::text(503, "not ready"),
        Action::Metrics => {
            let live = Live {
                held: handler.backends.waiting(),
                healthy_backends: handler.backends.eligible(),
                current_id: handler.reporter.current_id(),
                children: handler.reporter.child_figures(),
            };
            Reply {
                content_type: "text/plain; version=0.0.4",
                ..Reply::text(200, "")
            }
            .body(METRICS.render(&live))
        }
        Action::Status => {
            let mut json =
                serde_json::to_string_pretty(&handler.reporter.status()).unwrap_or_default();
            json.push('\n');
            Reply {
                content_type: "application/json",
                ..Reply::text(200, "")
            }
            .body(json)
        }
        Action::Command(command) => match handler.control.send(command).await {
            Ok(text) => Reply::text(200, &text),
            Err(error) => Reply::text(409, &error),
        },
        Action::Reply(reply) => reply,
    };
    let mut head_text = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        reply.code,
        reason(reply.code),
        reply.content_type,
        reply.body.len()
    );
    if let Some((name, value)) = reply.header {
        head_text.push_str(&format!("{name}: {value}\r\n"));
    }
    head_text.push_str("\r\n");
    let _ = stream.write_all(head_text.as_bytes()).await;
    if head.method != "HEAD" {
        let _ = stream.write_all(reply.body.as_bytes()).await;
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        _ => "Service Unavailable",
    }
}

/// An answer without the engine.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    content_type: &'static str,
    /// One more header: `Allow` or `WWW-Authenticate`.
    header: Option<(&'static str, &'static str)>,
    body: String,
}

impl Reply {
    /// A plain-text answer: `text` and a newline.
    fn text(code: u16, text: &str) -> Reply {
        let mut body = text.to_string();
        if !body.is_empty() && !body.ends_with('\n') {
            body.push('\n');
        }
        Reply {
            code,
            content_type: "text/plain",
            header: None,
            body,
        }
    }

    fn body(self, body: String) -> Reply {
        Reply { body, ..self }
    }

    fn with(self, name: &'static str, value: &'static str) -> Reply {
        Reply {
            header: Some((name, value)),
            ..self
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Action {
    Ready,
    Metrics,
    Status,
    Command(Command),
    Reply(Reply),
}

/// What to do with a request: decided from its method, path and
/// `Authorization` header, the token, the client's address and what the
/// listener serves.
fn decide(
    scope: Scope,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    token: Option<&Secret>,
    peer: IpAddr,
) -> Action {
    const GET: &str = "GET, HEAD";
    let path = path.split('?').next().unwrap_or("");
    let readable = method == "GET" || method == "HEAD";
    let not_allowed =
        |allow| Action::Reply(Reply::text(405, &format!("use {allow}")).with("Allow", allow));
    // Readiness is public: a load balancer's check carries no token.
    if path == "/ready" {
        return match readable {
            true => Action::Ready,
            false => not_allowed(GET),
        };
    }
    if scope == Scope::Ready {
        return Action::Reply(Reply::text(
            404,
            "not found: this listener serves /ready only",
        ));
    }
    if let Some(token) = token {
        if !bearer_matches(authorization, token) {
            return Action::Reply(
                Reply::text(
                    401,
                    "missing or wrong token: send Authorization: Bearer TOKEN",
                )
                .with("WWW-Authenticate", "Bearer realm=\"liveroll\""),
            );
        }
    }
    let read = |action| match readable {
        true => action,
        false => not_allowed(GET),
    };
    match path {
        "/metrics" => read(Action::Metrics),
        "/status" => read(Action::Status),
        _ => match path.strip_prefix('/').and_then(Command::parse) {
            Some(_) if method != "POST" => not_allowed("POST"),
            Some(_) if token.is_none() && !peer.to_canonical().is_loopback() => {
                Action::Reply(Reply::text(
                    403,
                    &format!(
                        "commands from {peer} are refused: without --admin-token, only loopback clients may POST"
                    ),
                ))
            }
            Some(command) => Action::Command(command),
            None => Action::Reply(Reply::text(
                404,
                "not found: GET /metrics, /status, /ready; POST /rollover, /pause, /resume, /rollback, /promote, /upgrade",
            )),
        },
    }
}

/// `Authorization: Bearer TOKEN` with the right token, compared in constant
/// time (a wrong guess takes as long whichever byte was wrong).
fn bearer_matches(authorization: Option<&str>, token: &Secret) -> bool {
    let Some((scheme, given)) = authorization.map(str::trim).and_then(|a| a.split_once(' ')) else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.expose().as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not a secret worth hiding; the bytes are.
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The parts of a request that matter here.
struct Head {
    method: String,
    path: String,
    authorization: Option<String>,
}

/// Reads a request head, and its body if it has one (a client that sent a
/// body we never read could see its connection reset before our answer).
async fn read_request(stream: &mut TcpStream) -> Option<Head> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                };
                let body: usize = header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let head = Head {
                    method: req.method?.to_string(),
                    path: req.path?.to_string(),
                    authorization: header("authorization").map(str::to_string),
                };
                if body > MAX_REQUEST {
                    return None;
                }
                let mut left = (len + body).saturating_sub(buf.len());
                let mut sink = [0u8; 1024];
                while left > 0 {
                    let n = stream.read(&mut sink).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    left = left.saturating_sub(n);
                }
                return Some(head);
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => {}
            _ => return None,
        }
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    fn token() -> Secret {
        "s3cret".parse().unwrap()
    }

    fn code(action: Action) -> u16 {
        match action {
            Action::Reply(reply) => reply.code,
            _ => 200,
        }
    }

    #[test]
    fn the_ready_listener_serves_ready_only() {
        let d = |method, path| decide(Scope::Ready, method, path, None, None, REMOTE);
        assert_eq!(d("GET", "/ready"), Action::Ready);
        assert_eq!(d("HEAD", "/ready?x=1"), Action::Ready);
        for path in ["/status", "/metrics", "/pause", "/", "/readyz"] {
            assert_eq!(code(d("GET", path)), 404, "{path}");
            assert_eq!(code(d("POST", path)), 404, "{path}");
        }
        let Action::Reply(reply) = d("POST", "/ready") else {
            panic!()
        };
        assert_eq!(
            (reply.code, reply.header),
            (405, Some(("Allow", "GET, HEAD")))
        );
        // A token on the admin listener changes nothing here.
        let t = token();
        assert_eq!(
            decide(Scope::Ready, "GET", "/ready", None, Some(&t), REMOTE),
            Action::Ready
        );
    }

    #[test]
    fn a_token_guards_everything_but_ready() {
        let t = token();
        let d = |path, auth| decide(Scope::Admin, "GET", path, auth, Some(&t), REMOTE);
        assert_eq!(d("/ready", None), Action::Ready);
        for auth in [
            None,
            Some("Bearer wrong!"),
            Some("Bearer s3cre"),
            Some("Basic s3cret"),
            Some("s3cret"),
            Some("Bearer"),
        ] {
            let Action::Reply(reply) = d("/status", auth) else {
                panic!("{auth:?} let through")
            };
            assert_eq!(reply.code, 401, "{auth:?}");
            assert_eq!(
                reply.header,
                Some(("WWW-Authenticate", "Bearer realm=\"liveroll\""))
            );
            // Which paths exist is not told either.
            assert_eq!(code(d("/nope", auth)), 401);
        }
        assert_eq!(d("/status", Some("Bearer s3cret")), Action::Status);
        assert_eq!(d("/metrics", Some("bearer  s3cret ")), Action::Metrics);
        // With the token, commands come from anywhere.
        assert_eq!(
            decide(
                Scope::Admin,
                "POST",
                "/pause",
                Some("Bearer s3cret"),
                Some(&t),
                REMOTE
            ),
            Action::Command(Command::Pause)
        );
    }

    #[test]
    fn without_a_token_commands_come_from_loopback_only() {
        let d = |peer| decide(Scope::Admin, "POST", "/rollover", None, None, peer);
        assert_eq!(d(LOOPBACK), Action::Command(Command::Rollover));
        assert_eq!(
            d("::1".parse().unwrap()),
            Action::Command(Command::Rollover)
        );
        assert_eq!(
            d("127.3.4.5".parse().unwrap()),
            Action::Command(Command::Rollover)
        );
        assert_eq!(
            d("::ffff:127.0.0.1".parse().unwrap()),
            Action::Command(Command::Rollover)
        );
        for peer in ["10.0.0.9", "172.17.0.1", "::ffff:10.0.0.9", "fe80::1"] {
            let Action::Reply(reply) = d(peer.parse().unwrap()) else {
                panic!("{peer} let through")
            };
            assert_eq!(reply.code, 403, "{peer}");
            assert!(reply.body.contains("--admin-token"), "{}", reply.body);
        }
        // Reading stays open to whoever reaches the port, as before.
        assert_eq!(
            decide(Scope::Admin, "GET", "/status", None, None, REMOTE),
            Action::Status
        );
    }

    #[test]
    fn methods_are_checked_per_endpoint() {
        fn d(method: &str, path: &str) -> Action {
            decide(Scope::Admin, method, path, None, None, LOOPBACK)
        }
        for name in ["rollover", "pause", "resume", "rollback", "promote"] {
            let path = format!("/{name}");
            assert_eq!(
                d("POST", &path),
                Action::Command(Command::parse(name).unwrap())
            );
            for method in ["GET", "HEAD", "PUT", "DELETE"] {
                let Action::Reply(reply) = d(method, &path) else {
                    panic!("{method} {path}")
                };
                assert_eq!((reply.code, reply.header), (405, Some(("Allow", "POST"))));
            }
        }
        for path in ["/status", "/metrics", "/ready"] {
            let Action::Reply(reply) = d("POST", path) else {
                panic!("POST {path}")
            };
            assert_eq!(
                (reply.code, reply.header),
                (405, Some(("Allow", "GET, HEAD")))
            );
        }
        assert_eq!(code(d("GET", "/reboot")), 404);
        assert_eq!(code(d("POST", "/reboot")), 404);
    }

    #[test]
    fn equal_bytes_only() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
