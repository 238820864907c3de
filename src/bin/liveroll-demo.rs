//! A tiny HTTP app that stands in for a container in the README and the tests.
//!
//! `GET /` prints its version and pid; the health path answers 200 (or 503
//! with `--unhealthy`); `/slow?ms=N` answers after N ms; `/echo` returns the
//! request body; `/headers` prints the request headers. It binds with
//! `SO_REUSEADDR`, and on SIGTERM stops accepting, finishes the requests in
//! flight and exits 0.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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
}

const MAX_HEAD: usize = 64 * 1024;
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
    eprintln!(
        "liveroll-demo {} pid={} listening on {addr}",
        args.app_version,
        std::process::id()
    );

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
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    let who = format!("version={} pid={}\n", args.app_version, std::process::id());
    match (req.method.as_str(), path) {
        (_, p) if p == args.healthcheck => match args.unhealthy {
            true => (503, "Service Unavailable", b"unhealthy\n".to_vec()),
            false => (200, "OK", b"ok\n".to_vec()),
        },
        ("GET" | "HEAD", "/") => (200, "OK", who.into_bytes()),
        (_, "/slow") => {
            let ms = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("ms="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
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
                let length: usize = match header("content-length").map(str::parse) {
                    Some(Ok(n)) if n <= MAX_BODY => n,
                    Some(_) => return Err("bad content-length\n".into()),
                    None if header("transfer-encoding").is_some() => {
                        return Err("chunked bodies are not supported\n".into())
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
                while buf.len() < head_len + length {
                    if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
                        return Err("connection closed inside the body\n".into());
                    }
                }
                let body = buf[head_len..head_len + length].to_vec();
                buf.drain(..head_len + length);
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
