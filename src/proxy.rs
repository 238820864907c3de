//! The reverse proxy: round-robin over the healthy children, retrying a
//! failed connect on the next one.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::prelude::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{ProxyHttp, Session};

use crate::backends::{BackendSet, Lease};

const NO_BACKEND_BODY: &[u8] = b"503 Service Unavailable: no healthy backend\n";
/// Connect attempts per request. Nothing has been sent when a connect fails,
/// so retrying is safe for every method; three covers both slots and one more.
const MAX_CONNECT_ATTEMPTS: u8 = 3;

pub struct Proxy {
    backends: Arc<BackendSet>,
}

impl Proxy {
    pub fn new(backends: Arc<BackendSet>) -> Self {
        Proxy { backends }
    }
}

#[derive(Default)]
pub struct Ctx {
    /// The backend this request is on; held until the request ends, so
    /// retirement can wait for it.
    lease: Option<Lease>,
    /// The backend whose connect failed last, avoided by the next pick.
    failed: Option<u64>,
    attempts: u8,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// Answers 503 at once when no child is healthy (rather than a 502 from a
    /// failed connect), with a body that says why.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.lease = self.backends.select(None);
        if ctx.lease.is_some() {
            return Ok(false);
        }
        let mut resp = ResponseHeader::build(503, Some(4))?;
        resp.insert_header("Content-Type", "text/plain")?;
        resp.insert_header("Content-Length", NO_BACKEND_BODY.len())?;
        resp.insert_header("Retry-After", "1")?;
        session
            .as_downstream_mut()
            .write_error_response(resp, Bytes::from_static(NO_BACKEND_BODY))
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        ctx.attempts += 1;
        if ctx.lease.is_none() {
            // A retry: the failed lease was released in `fail_to_connect`.
            ctx.lease = self.backends.select(ctx.failed);
        }
        let Some(lease) = &ctx.lease else {
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy backend left");
        };
        let backend = lease.backend();
        let mut peer = HttpPeer::new(backend.addr, false, String::new());
        // Connections pooled for one child are never handed to its successor
        // on the same port.
        peer.group_key = backend.generation;
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.failed = ctx.lease.take().map(|lease| lease.backend().generation);
        if ctx.attempts < MAX_CONNECT_ATTEMPTS {
            e.set_retry(true);
        }
        e
    }

    /// Standard forwarding headers (hop-by-hop headers are already stripped by
    /// Pingora's default upstream request policy). An `X-Forwarded-Proto` or
    /// `-Host` set by a load balancer in front is kept; the client address is
    /// appended to `X-Forwarded-For` like nginx's `$proxy_add_x_forwarded_for`.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
        {
            let forwarded_for = match req.headers.get("x-forwarded-for").map(|v| v.to_str()) {
                Some(Ok(prior)) if !prior.is_empty() => format!("{prior}, {ip}"),
                _ => ip.to_string(),
            };
            req.insert_header("X-Forwarded-For", forwarded_for)?;
        }
        if !req.headers.contains_key("x-forwarded-proto") {
            req.insert_header("X-Forwarded-Proto", "http")?;
        }
        if !req.headers.contains_key("x-forwarded-host") {
            if let Some(host) = req.headers.get("host").cloned() {
                req.insert_header("X-Forwarded-Host", host)?;
            }
        }
        Ok(())
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
