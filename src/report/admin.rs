//! The admin listener (`--admin-listen`): `/metrics`, `/status` and `/ready`.
//!
//! It runs in the supervisor's runtime rather than as a Pingora service, so
//! it keeps answering while the proxy drains at shutdown: `/ready` then says
//! 503, which is what a load balancer in front needs to see.

use std::sync::Arc;
use std::time::Duration;

use log::debug;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::metrics::{Live, METRICS};
use super::reporter::Reporter;
use crate::serve::backends::BackendSet;

const MAX_REQUEST: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, reporter: Arc<Reporter>, backends: Arc<BackendSet>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, reporter.clone(), backends.clone()));
            }
            Err(e) => {
                // E.g. out of file descriptors: do not spin on it.
                debug!("event=admin_accept_failed error={:?}", e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: TcpStream, reporter: Arc<Reporter>, backends: Arc<BackendSet>) {
    let Ok(Some((method, path))) = tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await
    else {
        return;
    };
    let (code, content_type, body) = route(&method, &path, &reporter, &backends);
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    if method != "HEAD" {
        let _ = stream.write_all(body.as_bytes()).await;
    }
}

fn route(
    method: &str,
    path: &str,
    reporter: &Reporter,
    backends: &BackendSet,
) -> (u16, &'static str, String) {
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", "only GET\n".into());
    }
    match path.split('?').next().unwrap_or("") {
        "/metrics" => {
            let live = Live {
                held: backends.waiting(),
                healthy_backends: backends.eligible(),
                current_id: reporter.current_id(),
            };
            (200, "text/plain; version=0.0.4", METRICS.render(&live))
        }
        "/status" => {
            let mut json = serde_json::to_string_pretty(&reporter.status()).unwrap_or_default();
            json.push('\n');
            (200, "application/json", json)
        }
        "/ready" if reporter.ready() => (200, "text/plain", "ready\n".into()),
        "/ready" => (503, "text/plain", "not ready\n".into()),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /status or /ready\n".into(),
        ),
    }
}

/// Reads a request head; returns its method and path.
async fn read_head(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                return Some((req.method?.to_string(), req.path?.to_string()));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST => {}
            _ => return None,
        }
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
}
