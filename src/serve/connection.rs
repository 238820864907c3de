//! The client side of the proxy, per connection: what Pingora's own HTTP/1
//! connection loop does not do.
//!
//! [`Edge`] is the [`ServerApp`] the proxy service runs: it drives
//! Pingora's `HttpProxy` one request at a time, like Pingora's own loop for
//! HTTP/1 (`apps/mod.rs`, `impl ServerApp for T: HttpServerApp`), and adds:
//!
//! - pipelining (RFC 9112 §9.3.2), switched on for every connection;
//! - an idle timeout: `--header-timeout` before a connection's first
//!   request, `--keepalive-timeout` between requests (Pingora's own is 60 s
//!   for the first request and none afterwards). It is kept by the stream
//!   wrapper with one timer per connection that is re-armed only when it
//!   fires early, not per request: Pingora's keep-alive timeout would
//!   register a timer (a clock read, an allocation and a lock on its timer
//!   tree) for every request;
//! - a wrapper around the client socket ([`EdgeStream`], `stream`) that
//!   watches each request header as Pingora reads it (`head`): the whole
//!   header must arrive within
//!   `--header-timeout` of its first byte (408), its request line must be
//!   well formed (400: Pingora would percent-encode a space or NUL in the
//!   target and forward it) and at most 64 KiB (414), its fields at most
//!   64 KiB (431). Such a connection is answered and closed without anything
//!   reaching a child, and without an error line from Pingora;
//! - no session while a connection is idle: between requests the loop
//!   waits for the next request's first bytes on the stream alone, and
//!   creates Pingora's session (its header buffer, the proxy's task state)
//!   only then, so an idle keep-alive connection costs little memory;
//! - a lingering close after every error answer, so a client still sending
//!   gets to read it instead of a reset;
//! - `--max-connections` (`admission`, a Pingora connection filter): past
//!   it the accept loop waits, and new connections stay in the kernel's
//!   listen backlog until one closes.

use std::future::poll_fn;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use log::debug;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::{HttpProxy, ProxyHttp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::admission::{Slot, Slots};
use super::head::HeadRefusal;
use super::latch::Latch;
use super::stream::{EdgeStream, Shared};
use crate::report::metrics::METRICS;

/// How long a client that is answered with an error may go on sending
/// before the connection is closed anyway, and how much it may send.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// The timeouts of [`Edge`], from the command line.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// `--header-timeout`: for a whole request header from its first byte,
    /// and for the first request of a connection to begin.
    pub header: Duration,
    /// `--keepalive-timeout`: between requests; zero turns keep-alive off.
    pub keepalive: Duration,
}

/// The proxy service's per-connection application; see the module docs.
pub struct Edge<SV: ProxyHttp> {
    proxy: Arc<HttpProxy<SV>>,
    timeouts: Timeouts,
    slots: Arc<Slots>,
    /// Set when the service shuts down (not after a handover): connections
    /// waiting for a request end.
    closing: Latch,
}

impl<SV: ProxyHttp> Edge<SV> {
    pub fn new(proxy: HttpProxy<SV>, timeouts: Timeouts, slots: Arc<Slots>) -> Self {
        Edge {
            proxy: Arc::new(proxy),
            timeouts,
            slots,
            closing: Latch::default(),
        }
    }
}

#[async_trait]
impl<SV> ServerApp for Edge<SV>
where
    SV: ProxyHttp + Send + Sync + 'static,
    SV::CTX: Send + Sync,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // The slot was taken in `Admission::should_accept`.
        let _slot = Slot(&self.slots);
        let shared = Arc::new(Shared::default());
        let mut edge = Box::new(EdgeStream::new(stream, shared.clone(), self.timeouts));
        let mut settings: Option<HttpPersistentSettings> = None;
        loop {
            if edge.holds_nothing() {
                // Idle: wait for the request without a session (see the
                // module docs).
                let start = tokio::select! {
                    biased;
                    refusal = shared.refused() => Err(refusal),
                    started = poll_fn(|cx| edge.poll_request_start(cx)) => Ok(started),
                    () = self.closing.wait() => Ok(false),
                };
                match start {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(refusal) => {
                        drop(edge);
                        refuse(&shared, refusal).await;
                        return None;
                    }
                }
            }
            let mut session = ServerSession::new_http1(edge);
            if let Some(settings) = settings.take() {
                settings.apply_to_session(&mut session);
            }
            session.set_pipelining_enabled(true);
            // No Pingora timeout while waiting for a request (0: none): the
            // stream keeps the idle and header timeouts.
            session.set_keepalive((!*shutdown.borrow()).then_some(0));
            let outcome = {
                let serve = self.proxy.process_new_http(session, shutdown);
                tokio::pin!(serve);
                tokio::select! {
                    biased;
                    refusal = shared.refused() => Err(refusal),
                    reused = &mut serve => Ok(reused),
                }
            };
            match outcome {
                Ok(Some(reused)) => {
                    let (next, next_settings) = reused.consume();
                    edge = next_request(next, &shared, self.timeouts);
                    settings = next_settings;
                }
                Ok(None) => {
                    if let Some(stream) = shared.take_stream() {
                        Box::pin(linger(stream, None)).await;
                    }
                    return None;
                }
                Err(refusal) => {
                    refuse(&shared, refusal).await;
                    return None;
                }
            }
        }
    }

    async fn cleanup(&self) {
        // Idle connections end now, as Pingora's own do in `http_cleanup`.
        self.closing.set();
        self.proxy.http_cleanup().await;
    }
}

/// Answers a refused request header and closes the connection, lingering.
async fn refuse(shared: &Shared, refusal: HeadRefusal) {
    METRICS.response(refusal.status());
    debug!("event=refused status={}", refusal.status());
    if let Some(stream) = shared.take_stream() {
        Box::pin(linger(stream, Some(refusal.response()))).await;
    }
}

/// The stream Pingora handed back for the next request, ready for it.
fn next_request(stream: Stream, shared: &Arc<Shared>, timeouts: Timeouts) -> Box<EdgeStream> {
    if !stream.as_any().is::<EdgeStream>() {
        // Not ours (cannot happen): watch it from here on.
        return Box::new(EdgeStream::new(stream, shared.clone(), timeouts));
    }
    match stream.into_any().downcast::<EdgeStream>() {
        Ok(mut edge) => {
            edge.next_request();
            edge
        }
        Err(_) => unreachable!("checked above"),
    }
}

/// Reads and discards what the client still sends after an error answer,
/// for a while, so the answer is not lost to a reset (the kernel resets a
/// connection closed with unread data, and the client's kernel may then
/// drop the answer before it was read).
async fn linger(mut stream: Stream, response: Option<Vec<u8>>) {
    if let Some(bytes) = response {
        match tokio::time::timeout(LINGER, stream.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = tokio::time::timeout(LINGER, AsyncWriteExt::shutdown(&mut stream)).await;
    let deadline = Instant::now() + LINGER;
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    while total < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => total += n,
            _ => break,
        }
    }
}
