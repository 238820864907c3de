//! HTTP health checks against a child on loopback.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::process::child::Child;

/// First pause between probes; it doubles up to [`MAX_PAUSE`]. A new probe
/// goes out every pause even while earlier ones wait for an answer, so a
/// child is seen healthy within [`MAX_PAUSE`] of its first 200 however
/// long a single probe hangs (behind `docker-proxy`, a probe sent before the
/// container's network is up is accepted and hangs for about a second).
const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_millis(10);
/// Probes waiting for an answer at once, at most.
const MAX_IN_FLIGHT: usize = 64;
/// Each probe on its own may take this long (a child that accepts and hangs).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub enum HealthError {
    /// The child never answered 200; the last thing it did say.
    TimedOut { after: Duration, last: String },
    /// The child's shell exited before it became healthy.
    Exited(std::process::ExitStatus),
}

impl fmt::Display for HealthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthError::TimedOut { after, last } => write!(
                f,
                "not healthy within {} (last probe: {last})",
                humantime::format_duration(*after)
            ),
            HealthError::Exited(status) => write!(f, "exited before it was healthy ({status})"),
        }
    }
}

/// Probes `path` on the child until it answers 200, it exits, or `timeout`
/// passes.
pub async fn wait_healthy(
    child: &Child,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(), HealthError> {
    let deadline = Instant::now() + timeout;
    let mut probes = JoinSet::new();
    let mut pause = FIRST_PAUSE;
    let mut next = Instant::now();
    let mut last = "no answer yet".to_string();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(HealthError::TimedOut {
                after: timeout,
                last,
            });
        }
        if now >= next && probes.len() < MAX_IN_FLIGHT {
            let path = path.to_string();
            probes.spawn(
                async move { tokio::time::timeout(PROBE_TIMEOUT, probe(port, &path)).await },
            );
            next = now + pause;
            pause = (pause * 2).min(MAX_PAUSE);
        }
        let wake = next.min(deadline);
        tokio::select! {
            status = child.exited() => return Err(HealthError::Exited(status)),
            Some(done) = probes.join_next() => match done {
                Ok(Ok(Ok(200))) => return Ok(()),
                Ok(Ok(Ok(code))) => last = format!("HTTP {code}"),
                Ok(Ok(Err(e))) => last = e.to_string(),
                Ok(Err(_)) => last = format!("no answer within {PROBE_TIMEOUT:?}"),
                Err(_) => {}
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

/// One `GET path` to `127.0.0.1:port`; returns the status code.
pub async fn probe(port: u16, path: &str) -> std::io::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: liveroll-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return Ok(response.code.expect("complete response has a code"))
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            Ok(httparse::Status::Partial) | Err(_) => {
                return Err(std::io::Error::other("malformed HTTP response"))
            }
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::Error::other("connection closed before a response"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn serve_once(response: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(response.as_bytes()).await;
        });
        port
    }

    #[tokio::test]
    async fn probe_reads_the_status_code() {
        let port = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(probe(port, "/healthz").await.unwrap(), 200);
        let port = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(probe(port, "/healthz").await.unwrap(), 503);
    }

    #[tokio::test]
    async fn probe_rejects_garbage_and_early_close() {
        let port = serve_once("SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(probe(port, "/").await.is_err());
        let port = serve_once("").await;
        assert!(probe(port, "/").await.is_err());
    }
}
