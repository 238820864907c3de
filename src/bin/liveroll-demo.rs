//! A tiny HTTP app that stands in for a container in the README and the tests.
//!
//! `GET /` prints its version and pid; the health path answers 200 (or 503
//! with `--unhealthy`, or after `POST /admin/fail-health` until
//! `POST /admin/pass-health`); `/slow?ms=N` answers after N ms; `/echo`
//! returns the request body; `/headers` prints the request headers;
//! `/events?n=N&interval_ms=M` streams N server-sent events (chunked);
//! `/stream?n=N&interval_ms=M` streams N lines with neither Content-Length
//! nor chunked encoding, ending the body by closing, as HTTP/1.0 servers do;
//! `POST /admin/slow-health?ms=N` makes the health path answer only after
//! N ms (an overloaded app; `ms=0` ends it); `/ws` is a
//! WebSocket echo. It binds with `SO_REUSEADDR`, and on SIGTERM stops
//! accepting, finishes the requests in flight (ending streams and WebSockets
//! cleanly) and exits 0.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

#[derive(Parser, Debug, Clone)]
#[command(name = "liveroll-demo", version, about = "Demo app for liveroll")]
struct Args {
    /// Port to listen on (liveroll passes `<<PORT>>`).
    #[arg(long)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Version string shown on `/`.
    #[arg(long = "app-version", default_value = "dev")]
    app_version: String,
    /// Health check path (liveroll passes `<<HEALTHCHECK>>`).
    #[arg(long, default_value = "/healthz")]
    healthcheck: String,
    /// Answer 503 on the health path: a child that never becomes healthy.
    #[arg(long)]
    unhealthy: bool,
    /// Wait this long before listening (a slow-starting app).
    #[arg(long, value_parser = humantime::parse_duration)]
    start_delay: Option<Duration>,
    /// Free text shown in the process list, e.g. to find every instance of a test.
    #[arg(long, default_value = "")]
    label: String,
    /// A bad version: answer this share (percent) of requests with 500
    /// (the health path is not affected).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// A bad version: answer every request this much later (the health
    /// path is not affected).
    #[arg(long, value_parser = humantime::parse_duration)]
    latency: Option<Duration>,
    /// A bad version: exit with status 1 this long after it started listening.
    #[arg(long, value_parser = humantime::parse_duration)]
    crash_after: Option<Duration>,
}

const MAX_HEAD: usize = 256 * 1024;
/// Flipped by `/admin/fail-health` and `/admin/pass-health`.
static FAILING_HEALTH: AtomicBool = AtomicBool::new(false);
/// Set by `/admin/slow-health`: how long the health path takes to answer.
static SLOW_HEALTH_MS: AtomicU64 = AtomicU64::new(0);
const MAX_BODY: usize = 16 * 1024 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    if let Some(delay) = args.start_delay {
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = term.recv() => return,
        }
    }
    let addr = SocketAddr::new(args.bind, args.port);
    let listener = match listen(addr) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("liveroll-demo: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    // The time (Unix epoch, milliseconds) lets a measurement compare it
    // with liveroll's own log, also from inside a container.
    let epoch_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    eprintln!(
        "liveroll-demo {} pid={} listening on {addr} at_ms={epoch_ms}",
        args.app_version,
        std::process::id()
    );

    if let Some(after) = args.crash_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!(
                "liveroll-demo pid={} crashing as asked (--crash-after)",
                std::process::id()
            );
            std::process::exit(1);
        });
    }
    let (stop_tx, stop) = watch::channel(false);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve(stream, args.clone(), stop.clone()));
                }
                Err(e) => eprintln!("liveroll-demo: accept: {e}"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = term.recv() => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let inflight = connections.len();
    while connections.join_next().await.is_some() {}
    eprintln!(
        "liveroll-demo {} pid={} stopped after finishing {inflight} connection(s)",
        args.app_version,
        std::process::id()
    );
}

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

/// Serves one keep-alive connection. While idle it closes as soon as a stop
/// is requested; a request already started is always answered.
async fn serve(mut stream: TcpStream, args: Args, mut stop: watch::Receiver<bool>) {
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.is_empty() {
            tokio::select! {
                ready = stream.readable() => if ready.is_err() { return },
                _ = stop.wait_for(|&s| s) => return,
            }
        }
        let request = match read_request(&mut stream, &mut buf).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(msg) => {
                let _ = respond(&mut stream, 400, "Bad Request", msg.as_bytes(), true).await;
                return;
            }
        };
        let path = request.path.split('?').next().unwrap_or("");
        if path == "/ws" {
            return websocket(stream, &request, &buf, stop).await;
        }
        if path == "/events" {
            return events(stream, &request, stop).await;
        }
        if path == "/stream" {
            return close_delimited(stream, &request).await;
        }
        let (status, reason, body) = route(&request, &args).await;
        let close = request.close || *stop.borrow();
        if respond(&mut stream, status, reason, &body, close)
            .await
            .is_err()
            || close
        {
            return;
        }
    }
}

async fn route(req: &Request, args: &Args) -> (u16, &'static str, Vec<u8>) {
    let path = req.path.split('?').next().unwrap_or("");
    let who = format!("version={} pid={}\n", args.app_version, std::process::id());
    if path != args.healthcheck {
        if let Some(latency) = args.latency {
            tokio::time::sleep(latency).await;
        }
        if failing(args.fail_rate) {
            return (
                500,
                "Internal Server Error",
                format!("failing as asked {who}").into_bytes(),
            );
        }
    }
    match (req.method.as_str(), path) {
        (_, p) if p == args.healthcheck => {
            let delay = SLOW_HEALTH_MS.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            match args.unhealthy || FAILING_HEALTH.load(Ordering::Relaxed) {
                true => (503, "Service Unavailable", b"unhealthy\n".to_vec()),
                false => (200, "OK", b"ok\n".to_vec()),
            }
        }
        ("POST", "/admin/fail-health" | "/admin/pass-health") => {
            FAILING_HEALTH.store(path.ends_with("fail-health"), Ordering::Relaxed);
            (200, "OK", format!("health {path}\n").into_bytes())
        }
        ("POST", "/admin/slow-health") => {
            let ms = query_number(req, "ms", 0);
            SLOW_HEALTH_MS.store(ms, Ordering::Relaxed);
            (200, "OK", format!("health takes {ms} ms\n").into_bytes())
        }
        ("GET" | "HEAD", "/") => (200, "OK", who.into_bytes()),
        (_, "/slow") => {
            let ms = query_number(req, "ms", 1000);
            eprintln!(
                "liveroll-demo pid={} slow request started ({ms} ms)",
                std::process::id()
            );
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (200, "OK", format!("slow {who}").into_bytes())
        }
        (_, "/echo") => (200, "OK", req.body.clone()),
        (_, "/headers") => {
            let text: String = req
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}\n"))
                .collect();
            (200, "OK", text.into_bytes())
        }
        _ => (404, "Not Found", b"not found\n".to_vec()),
    }
}

/// Whether this request is one of the `rate` percent that fail: every
/// request adds `rate` to a running count, and each full hundred fails one,
/// so the share is exact and spread evenly.
fn failing(rate: f64) -> bool {
    static SHARE: std::sync::Mutex<f64> = std::sync::Mutex::new(0.0);
    if rate <= 0.0 {
        return false;
    }
    let mut share = SHARE.lock().unwrap();
    *share += rate;
    if *share >= 100.0 {
        *share -= 100.0;
        return true;
    }
    false
}

/// Reads one request (head and Content-Length body). `Ok(None)` is a clean
/// close between requests.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<Request>, String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.as_str())
                };
                let chunked = header("transfer-encoding")
                    .is_some_and(|te| te.to_ascii_lowercase().ends_with("chunked"));
                let length: usize = match header("content-length").map(str::parse) {
                    _ if chunked => 0,
                    Some(Ok(n)) if n <= MAX_BODY => n,
                    Some(_) => return Err("bad content-length\n".into()),
                    None if header("transfer-encoding").is_some() => {
                        return Err("unsupported transfer-encoding\n".into())
                    }
                    None => 0,
                };
                let connection = header("connection").unwrap_or("").to_ascii_lowercase();
                let close = connection.contains("close")
                    || parsed.version == Some(0) && !connection.contains("keep-alive");
                let request_head = (
                    parsed.method.unwrap_or("GET").to_string(),
                    parsed.path.unwrap_or("/").to_string(),
                );
                let body = if chunked {
                    buf.drain(..head_len);
                    read_chunked(stream, buf).await?
                } else {
                    while buf.len() < head_len + length {
                        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                            return Err("connection closed inside the body\n".into());
                        }
                    }
                    let body = buf[head_len..head_len + length].to_vec();
                    buf.drain(..head_len + length);
                    body
                };
                return Ok(Some(Request {
                    method: request_head.0,
                    path: request_head.1,
                    headers,
                    body,
                    close,
                }));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("request head too large\n".into()),
            Err(e) => return Err(format!("malformed request: {e}\n")),
        }
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err("connection closed inside the head\n".into()),
            Ok(_) => {}
            Err(_) if buf.is_empty() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A chunked request body (extensions and trailers are skipped).
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    async fn line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<String, String> {
        loop {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                buf.drain(..end + 2);
                return Ok(line);
            }
            if buf.len() > MAX_HEAD {
                return Err("chunk line too long\n".into());
            }
            if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed inside the body\n".into());
            }
        }
    }
    let mut body = Vec::new();
    loop {
        let size_line = line(stream, buf).await?;
        let size = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| "bad chunk size\n".to_string())?;
        if size == 0 {
            while !line(stream, buf).await?.is_empty() {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return Err("body too large\n".into());
        }
        while buf.len() < size + 2 {
            if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                return Err("connection closed inside the body\n".into());
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    reason: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Demo-Pid: {}\r\n{}\r\n",
        body.len(),
        std::process::id(),
        if close { "Connection: close\r\n" } else { "" }
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out).await
}

fn query_number(req: &Request, key: &str, default: u64) -> u64 {
    let query = req.path.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Server-sent events, one chunk each, so a buffering proxy would show.
/// A stop request ends the stream early (cleanly, with the last chunk).
async fn events(mut stream: TcpStream, req: &Request, mut stop: watch::Receiver<bool>) {
    let n = query_number(req, "n", 3);
    let interval = Duration::from_millis(query_number(req, "interval_ms", 100));
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for i in 1..=n {
        let event = format!("data: event {i} pid={}\n\n", std::process::id());
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
        if i < n {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|&s| s) => break,
            }
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
}

/// N lines, `interval_ms` apart, in a body delimited by closing the
/// connection: no Content-Length, no chunked encoding.
async fn close_delimited(mut stream: TcpStream, req: &Request) {
    let n = query_number(req, "n", 3);
    let interval = Duration::from_millis(query_number(req, "interval_ms", 10));
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for i in 1..=n {
        let line = format!("line {i} pid={}\n", std::process::id());
        if stream.write_all(line.as_bytes()).await.is_err() {
            return;
        }
        if i < n {
            tokio::time::sleep(interval).await;
        }
    }
    let _ = stream.shutdown().await;
}

/// A WebSocket that echoes each text or binary message back as text, prefixed
/// with the pid. A stop request sends a close frame.
async fn websocket(
    mut stream: TcpStream,
    req: &Request,
    leftover: &[u8],
    mut stop: watch::Receiver<bool>,
) {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let Some(key) = header("sec-websocket-key") else {
        let _ = respond(
            &mut stream,
            400,
            "Bad Request",
            b"not a websocket request\n",
            true,
        )
        .await;
        return;
    };
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = leftover.to_vec();
    loop {
        let frame = tokio::select! {
            frame = read_frame(&mut stream, &mut buf) => frame,
            _ = stop.wait_for(|&s| s) => None,
        };
        match frame {
            Some((opcode, payload)) if opcode == 1 || opcode == 2 => {
                let mut reply = format!("pid={}: ", std::process::id()).into_bytes();
                reply.extend_from_slice(&payload);
                if stream.write_all(&frame_bytes(1, &reply)).await.is_err() {
                    return;
                }
            }
            Some((9, payload)) => {
                let _ = stream.write_all(&frame_bytes(10, &payload)).await;
            }
            Some((8, _)) | None => {
                let _ = stream.write_all(&frame_bytes(8, &[])).await;
                return;
            }
            Some(_) => {}
        }
    }
}

/// Reads one (masked, client-to-server) frame: opcode and unmasked payload.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 {
            let opcode = buf[0] & 0x0f;
            let masked = buf[1] & 0x80 != 0;
            let (len, mut at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => (usize::MAX, 0),
                n => (n as usize, 2),
            };
            if len != usize::MAX && len <= MAX_BODY {
                let mask_len = if masked { 4 } else { 0 };
                if buf.len() >= at + mask_len + len {
                    let mask: Vec<u8> = buf[at..at + mask_len].to_vec();
                    at += mask_len;
                    let mut payload = buf[at..at + len].to_vec();
                    if masked {
                        payload
                            .iter_mut()
                            .enumerate()
                            .for_each(|(i, b)| *b ^= mask[i % 4]);
                    }
                    buf.drain(..at + len);
                    return Some((opcode, payload));
                }
            } else if len != usize::MAX {
                return None;
            }
        }
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// An unmasked (server-to-client) frame.
fn frame_bytes(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}
