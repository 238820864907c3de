//! HTTP health checks against a child on loopback.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::process::child::Child;

/// First pause between probes; it doubles up to [`MAX_PAUSE`], so a child that
/// starts in milliseconds is seen within milliseconds, and a slow one is not
/// hammered.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(200);
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

/// Polls `path` on the child until it answers 200, it exits, or `timeout` passes.
pub async fn wait_healthy(
    child: &Child,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(), HealthError> {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, probe(port, path));
        let last = tokio::select! {
            status = child.exited() => return Err(HealthError::Exited(status)),
            result = probe => match result {
                Ok(Ok(200)) => return Ok(()),
                Ok(Ok(code)) => format!("HTTP {code}"),
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {PROBE_TIMEOUT:?}"),
            },
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(HealthError::TimedOut {
                after: timeout,
                last,
            });
        }
        tokio::select! {
            status = child.exited() => return Err(HealthError::Exited(status)),
            _ = tokio::time::sleep(pause.min(deadline - now)) => {}
        }
        pause = (pause * 2).min(MAX_PAUSE);
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
