//! The reverse proxy: round-robin over the healthy children. A request that
//! finds no child waits for one (bounded) instead of failing, and a request
//! whose child fails is retried on another where that is safe.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::HOST;
use http::HeaderValue;
use log::info;
use pingora_core::modules::http::HttpModules;
use pingora_core::prelude::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};
use tokio::time::Instant;

use super::backends::{BackendSet, Lease};
use super::canary;
use super::forwarded::{self, Trusted};
use super::stream::EdgeStream;
use super::strict::{self, Body, BodyLimit};
use crate::process::limits::is_exhaustion;
use crate::report::logfmt::q;
use crate::report::metrics::METRICS;

/// Attempts per request. Each failed attempt ejects its backend for
/// [`EJECT_FOR`] (or, for a child that died mid-request, finds it gone), so
/// the next one goes elsewhere or waits for a replacement; the wait itself
/// is bounded by `--hold-timeout`. Eight lets one request survive several
/// crashes in a row while still ending a loop that cannot succeed.
const MAX_ATTEMPTS: u8 = 8;
/// How long a backend that refused a connection is passed over.
const EJECT_FOR: Duration = Duration::from_secs(1);

pub struct Settings {
    /// How long a request may wait for a healthy child.
    pub hold_timeout: Duration,
    /// How many requests may wait at once; past it they get 503 at once.
    pub max_held: usize,
    /// Log one line per request (target `access`).
    pub access_log: bool,
    /// How a client is kept on its side of a canary.
    pub canary_by: canary::By,
    /// `--max-body-size`: larger request bodies get 413.
    pub max_body_size: Option<u64>,
    /// `--trusted-proxies`: whose forwarding headers are kept.
    pub trusted: Trusted,
    /// `--keepalive-timeout` is not zero: client connections may be reused.
    pub keepalive: bool,
}

pub struct Proxy {
    backends: Arc<BackendSet>,
    settings: Settings,
    /// Spreads new clients over the sides of a canary.
    canary_turn: AtomicUsize,
}

impl Proxy {
    pub fn new(backends: Arc<BackendSet>, settings: Settings) -> Self {
        Proxy {
            backends,
            settings,
            canary_turn: AtomicUsize::new(0),
        }
    }

    /// The end of this request's waiting, fixed when it first waits.
    fn hold_until(&self, ctx: &mut Ctx) -> Instant {
        *ctx.hold_until
            .get_or_insert_with(|| Instant::now() + self.settings.hold_timeout)
    }
}

pub struct Ctx {
    /// The backend this request is on; held until the request ends, so
    /// retirement can wait for it.
    lease: Option<Lease>,
    attempts: u8,
    /// When waiting for a backend must end; set by the first wait, so a
    /// request that never waits never reads the clock for it.
    hold_until: Option<Instant>,
    /// When the request arrived: the child's latency figures count from here.
    started: std::time::Instant,
    /// A canary runs and this client had no cookie for it yet.
    set_cookie: Option<String>,
    /// The request body is chunked, and counted against `--max-body-size`.
    chunked: bool,
    body: BodyLimit,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    /// No downstream modules: Pingora's default adds a (disabled) compression
    /// module whose context would be built for every request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            lease: None,
            attempts: 0,
            hold_until: None,
            started: std::time::Instant::now(),
            set_cookie: None,
            chunked: false,
            body: BodyLimit::default(),
        }
    }

    /// Picks a backend, waiting for one if none is healthy yet (startup, or
    /// the only child died and its replacement is starting). A request
    /// without a body notices its client leaving while it waits.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // What Pingora lets through and nginx refuses, before any child sees
        // the request; and the connection's stream learns the header is done.
        let checked = strict::check_request(session.req_header(), self.settings.max_body_size);
        let stream = EdgeStream::of(session.as_downstream());
        match checked {
            Ok(body) => {
                if let Some(stream) = stream {
                    stream.header_done(body.wire_len());
                }
                ctx.chunked = body == Body::Chunked;
            }
            Err(refusal) => {
                if let Some(stream) = stream {
                    stream.close_after_response();
                }
                strict::refuse(session, refusal).await?;
                return Ok(true);
            }
        }
        if !self.settings.keepalive {
            session.set_keepalive(None);
        }
        ctx.lease = self.backends.select_routed(|c| {
            let client = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            let (side, cookie) = canary::side(
                session.req_header(),
                client,
                c,
                self.settings.canary_by,
                &self.canary_turn,
            );
            ctx.set_cookie = cookie;
            side
        });
        if ctx.lease.is_some() {
            return Ok(false);
        }
        let Some(place) = self.backends.waiter(self.settings.max_held) else {
            respond_unavailable(session).await?;
            return Ok(true);
        };
        let has_body = has_body(session.req_header());
        let downstream = session.as_downstream_mut();
        let client_gone = async {
            if has_body {
                std::future::pending::<()>().await;
            }
            // Ends when the client closes or breaks. A pipelined next request
            // does not end it: with pipelining on, Pingora keeps its first
            // byte for the next session and this read stays pending.
            let _ = downstream.read_body_or_idle(true).await;
        };
        ctx.lease = tokio::select! {
            lease = self.backends.acquire(&place, self.hold_until(ctx)) => lease,
            _ = client_gone => None,
        };
        if ctx.lease.is_some() {
            return Ok(false);
        }
        // The place is given up only once answered: shutdown waits for that.
        respond_unavailable(session).await?;
        drop(place);
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.attempts += 1;
        if ctx.lease.is_none() {
            // A retry: the failed attempt released its lease.
            if let Some(place) = self.backends.waiter(self.settings.max_held) {
                let deadline = self.hold_until(ctx);
                ctx.lease = self.backends.acquire(&place, deadline).await;
            }
        }
        let Some(lease) = &ctx.lease else {
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                "no healthy backend within --hold-timeout",
            );
        };
        let backend = lease.backend();
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        // Connections pooled for one child are never handed to its successor
        // on the same port.
        peer.group_key = backend.generation;
        Ok(Box::new(peer))
    }

    /// Nothing was sent, so a retry is safe for every method; the backend is
    /// passed over for a moment so the retry goes elsewhere (or waits).
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if out_of_descriptors(&e) {
            // liveroll's own failure, not the child's: no ejection, no
            // error on its figures, and no retry that would fail the same
            // way at once.
            ctx.lease = None;
            return Error::because(
                ErrorType::HTTPStatus(503),
                "liveroll is out of file descriptors",
                e,
            );
        }
        if let Some(lease) = ctx.lease.take() {
            lease.backend().stats.upstream_error();
            self.backends.eject(lease.backend(), EJECT_FOR);
        }
        e.set_retry(ctx.attempts < MAX_ATTEMPTS);
        if e.retry() {
            METRICS.retry();
        }
        e
    }

    /// The connection failed after the request (or part of it) was sent.
    /// Errors Pingora marks "reused only" happened before any response byte
    /// arrived; an idempotent request is then retried whatever the
    /// connection (its child may have just died), within Pingora's 64 KiB
    /// retry buffer for bodies. Any other method is never resent: the child
    /// may have acted on it before it died, and a pooled connection that
    /// the child closed while idle looks exactly the same from here.
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        // Passed over for a moment, like a refused connect: an immediate retry
        // would likely meet the same dying child (or a proxy in front of it
        // that still accepts) again.
        // Only the child's fault counts: a client's broken body is not.
        if let Some(lease) = ctx.lease.take() {
            if *e.esource() == ErrorSource::Upstream {
                lease.backend().stats.upstream_error();
                self.backends.eject(lease.backend(), EJECT_FOR);
            }
        }
        let idempotent = session.req_header().method.is_idempotent();
        // A status of liveroll's own (413 for a body over the limit) is the
        // answer, not a failure to retry.
        let own_answer = matches!(e.etype(), ErrorType::HTTPStatus(_));
        if !idempotent
            || own_answer
            || session.as_ref().retry_buffer_truncated()
            || ctx.attempts >= MAX_ATTEMPTS
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(true);
        }
        if e.retry() {
            METRICS.retry();
        }
        e
    }

    /// Counts a chunked body against `--max-body-size` as it arrives.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let (true, Some(max), Some(data)) = (ctx.chunked, self.settings.max_body_size, body) {
            if ctx.body.add(data.len(), max).is_err() {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over --max-body-size",
                );
            }
        }
        Ok(())
    }

    /// Standard forwarding headers (hop-by-hop headers are already stripped by
    /// Pingora's default upstream request policy), trusted only from
    /// `--trusted-proxies` (see `forwarded`). An HTTP/1.0 request without
    /// `Host` gets the address the client connected to, as nginx's
    /// `$host` falls back to its server: the request goes on as HTTP/1.1,
    /// which needs one.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if !req.headers.contains_key(HOST) {
            if let Some(host) = session
                .server_addr()
                .and_then(|a| a.as_inet())
                .and_then(|a| HeaderValue::from_str(&a.to_string()).ok())
            {
                req.insert_header(HOST, host)?;
            }
        }
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted = client.is_some_and(|ip| self.settings.trusted.contains(ip));
        forwarded::apply(req, client, trusted)
    }

    /// The child answered: its figures count the status and how long the
    /// header took (what the bake window judges a new version by).
    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(lease) = &ctx.lease {
            let status = upstream_response.status.as_u16();
            lease
                .backend()
                .stats
                .response(status, ctx.started.elapsed());
        }
        Ok(())
    }

    /// Keeps a new client on its side of a canary; and liveroll's own HTTP
    /// version, and no chunked encoding for HTTP/1.0 clients (see
    /// `strict::fix_response`).
    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        strict::fix_response(session, response);
        if let Some(cookie) = ctx.set_cookie.take() {
            response.append_header("Set-Cookie", cookie)?;
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        METRICS.response(status);
        if self.settings.access_log {
            let started = ctx.started;
            let req = session.req_header();
            let client = session
                .client_addr()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let upstream = ctx
                .lease
                .as_ref()
                .map(|l| l.backend().addr.port())
                .unwrap_or(0);
            info!(
                target: "access",
                "client={client} method={} path={:?} status={status} upstream_port={upstream} attempts={} duration_ms={:.1}{}",
                req.method,
                req.uri.path_and_query().map_or("", |p| p.as_str()),
                ctx.attempts,
                started.elapsed().as_secs_f64() * 1000.0,
                error
                    .map(|e| format!(" error={}", q(&e.to_string())))
                    .unwrap_or_default(),
            );
        }
    }

    /// A client that goes away is ordinary traffic, not an error to log.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        *error.esource() == ErrorSource::Downstream
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }
}

/// Whether an error is liveroll running out of descriptors (or memory for
/// sockets): `EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM` at its root.
pub fn out_of_descriptors(e: &Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.raw_os_error())
        .is_some_and(is_exhaustion)
}

/// Whether the request announces a body (HTTP/1.1 framing headers).
fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key("transfer-encoding")
        || req
            .headers
            .get("content-length")
            .is_some_and(|v| v.as_bytes() != b"0")
}

const NO_BACKEND_BODY: &[u8] = b"503 Service Unavailable: no healthy backend\n";

/// 503 with a body that says why and a hint when to come back.
async fn respond_unavailable(session: &mut Session) -> Result<()> {
    let mut resp = ResponseHeader::build(503, Some(4))?;
    resp.insert_header("Content-Type", "text/plain")?;
    resp.insert_header("Content-Length", NO_BACKEND_BODY.len())?;
    resp.insert_header("Retry-After", "1")?;
    session
        .as_downstream_mut()
        .write_error_response(resp, Bytes::from_static(NO_BACKEND_BODY))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_announced_by_framing_headers() {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        assert!(!has_body(&req));
        req.insert_header("Content-Length", "0").unwrap();
        assert!(!has_body(&req));
        req.insert_header("Content-Length", "5").unwrap();
        assert!(has_body(&req));
    }
}
