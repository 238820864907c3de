//! The client socket as Pingora's HTTP/1 session sees it ([`EdgeStream`]):
//! while a request header is read it feeds the bytes to the header scan
//! (`head`) and keeps the header and idle timeouts; afterwards it only
//! passes bytes through and counts them, so the next request's start is
//! known even when Pingora has already read some of it (pipelining).
//!
//! Between requests it can also wait for the next request's first bytes
//! on its own ([`EdgeStream::poll_request_start`]), before the connection
//! loop creates Pingora's session for it: an idle keep-alive connection
//! then holds no session, no header buffer and no proxy task state, only
//! this stream.
//!
//! The timeouts use one timer per connection that is re-armed only when it
//! fires early, not per request: Pingora's keep-alive timeout would
//! register a timer (a clock read, an allocation and a lock on its timer
//! tree) for every request.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::connection::Timeouts;
use super::head::{HeadRefusal, Mode, Scan};

/// What a connection's loop (`connection::Edge`) and its [`EdgeStream`]
/// share.
#[derive(Default)]
pub(super) struct Shared {
    /// [`SERVING`], [`CLOSING`] or a [`HeadRefusal`].
    state: AtomicU8,
    /// The client socket, handed back by a dropped [`EdgeStream`] that is
    /// not [`SERVING`], for the answer and the lingering close.
    stream: Mutex<Option<Stream>>,
}

const SERVING: u8 = 0;
/// An error answer was written by the proxy; the connection closes after it.
const CLOSING: u8 = 1;

impl Shared {
    /// Resolves when the stream has refused the request header. The stream
    /// wakes the connection's task when it does.
    pub(super) fn refused(&self) -> impl Future<Output = HeadRefusal> + '_ {
        std::future::poll_fn(move |_| {
            match HeadRefusal::from_state(self.state.load(Ordering::Relaxed)) {
                Some(refusal) => Poll::Ready(refusal),
                None => Poll::Pending,
            }
        })
    }

    pub(super) fn take_stream(&self) -> Option<Stream> {
        if self.state.load(Ordering::Relaxed) == SERVING {
            return None;
        }
        self.stream.lock().ok()?.take()
    }
}

/// No body length known (chunked); see [`EdgeStream::header_done`].
const UNKNOWN: u64 = u64::MAX;

/// How much of a request [`EdgeStream::poll_request_start`] reads: all of
/// a typical API client's request header, so Pingora's first read is
/// usually served from it without another read of the socket.
const EARLY: usize = 512;

/// The client socket as Pingora's HTTP/1 session sees it; see the module
/// docs.
pub struct EdgeStream {
    /// `None` only once dropped.
    inner: Option<Stream>,
    shared: Arc<Shared>,
    /// Set by the proxy ([`Self::header_done`]) once Pingora has parsed the
    /// header: from then on reads are body bytes.
    header_done: AtomicBool,
    /// The body's length on the wire, or [`UNKNOWN`].
    body: AtomicU64,
    scan: Scan,
    /// Bytes read after the end of this request's header.
    after_head: u64,
    timeouts: Timeouts,
    /// How long this request may take to begin: `--header-timeout` for a
    /// connection's first, `--keepalive-timeout` afterwards.
    idle_limit: Duration,
    /// When the wait for this request began to count against `idle_limit`.
    idle_since: Option<Instant>,
    /// The header must be complete by then (set when it first has to wait).
    header_deadline: Option<Instant>,
    /// One timer for the connection, allocated when first needed. It may
    /// be set earlier than the deadline that matters: it is then re-armed
    /// when it fires, so a busy connection re-arms it at most once per
    /// timeout instead of once per request.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer was polled since it was last set, and will wake the task.
    timer_waits: bool,
    /// The next request's first bytes, read before its session existed;
    /// `early[taken..held]` is what Pingora has not read yet.
    early: [u8; EARLY],
    taken: u16,
    held: u16,
}

impl fmt::Debug for EdgeStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeStream")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl EdgeStream {
    pub(super) fn new(inner: Stream, shared: Arc<Shared>, timeouts: Timeouts) -> Self {
        EdgeStream {
            inner: Some(inner),
            shared,
            header_done: AtomicBool::new(false),
            body: AtomicU64::new(UNKNOWN),
            scan: Scan::fresh(),
            after_head: 0,
            timeouts,
            idle_limit: timeouts.header,
            idle_since: None,
            header_deadline: None,
            timer: None,
            timer_waits: false,
            early: [0; EARLY],
            taken: 0,
            held: 0,
        }
    }

    /// The stream under a proxy session, if it is one of ours.
    pub fn of(session: &ServerSession) -> Option<&EdgeStream> {
        session.stream()?.as_any().downcast_ref()
    }

    /// The proxy has the request header; `body` is the body's length on the
    /// wire if the header says it (`None`: chunked).
    pub fn header_done(&self, body: Option<u64>) {
        self.body.store(body.unwrap_or(UNKNOWN), Ordering::Relaxed);
        self.header_done.store(true, Ordering::Relaxed);
    }

    /// The proxy answers this request with an error: close the connection
    /// after it, lingering.
    pub fn close_after_response(&self) {
        let _ = self.shared.state.compare_exchange(
            SERVING,
            CLOSING,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Between two requests on the connection. The bytes read after the
    /// last header, less its body, are the start of the next request that
    /// Pingora already holds.
    pub(super) fn next_request(&mut self) {
        let body = *self.body.get_mut();
        let prefix = (self.scan.mode == Mode::Done && body != UNKNOWN)
            .then(|| self.after_head.checked_sub(body))
            .flatten();
        self.scan = Scan::after(prefix);
        self.after_head = 0;
        *self.header_done.get_mut() = false;
        *self.body.get_mut() = UNKNOWN;
        self.idle_limit = self.timeouts.keepalive;
        self.idle_since = None;
        self.header_deadline = None;
    }

    /// Whether nothing of the next request has been read yet (by Pingora
    /// with the previous one, or by [`Self::poll_request_start`]), so its
    /// session can wait to be created until its first bytes come.
    pub(super) fn holds_nothing(&self) -> bool {
        self.scan.mode == Mode::Leading && !self.scan.started() && self.taken == self.held
    }

    /// Reads the next request's first bytes, keeping them for Pingora's
    /// first read: `Ready(true)` once some came, `Ready(false)` if the
    /// connection ended first (closed by the client, an error, or the idle
    /// timeout). They go through the header scan as any header read: a
    /// refusal wakes the task and stays pending.
    pub(super) fn poll_request_start(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut bytes = [0u8; EARLY];
        let mut buf = ReadBuf::new(&mut bytes);
        match self.poll_read_header(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                let n = buf.filled().len();
                self.early[..n].copy_from_slice(buf.filled());
                (self.taken, self.held) = (0, n as u16);
                Poll::Ready(true)
            }
            Poll::Ready(_) => Poll::Ready(false),
        }
    }

    fn inner(&mut self) -> Pin<&mut Stream> {
        Pin::new(self.inner.as_mut().expect("used after drop"))
    }

    /// Refuses the request header: the connection's task is woken, sees the
    /// refusal and drops the session; this read never completes.
    fn refuse(&mut self, cx: &mut Context<'_>, refusal: HeadRefusal) -> Poll<io::Result<()>> {
        self.shared.state.store(refusal as u8, Ordering::Relaxed);
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Whether `deadline` has passed, with the connection's timer set to
    /// wake this task by then. The timer is moved earlier when needed, and
    /// later only once it has fired; it is polled (which registers the
    /// task's waker, and costs more than the rest) only when set or fired:
    /// a connection runs in one task, whose waker stays registered.
    fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                    self.timer_waits = false;
                } else if self.timer_waits && !timer.is_elapsed() {
                    return false;
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                self.timer_waits = true;
                return false;
            }
            if Instant::now() >= deadline {
                self.timer_waits = false;
                return true;
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// A header read that has to wait. Before the request's first byte the
    /// connection is idle: past its limit it ends as if the client had
    /// closed (Pingora then drops it quietly). Once bytes have come, the
    /// whole header has `--header-timeout` from its first wait (right after
    /// those bytes): past it, 408.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.scan.started() {
            let timeout = self.timeouts.header;
            let deadline = *self
                .header_deadline
                .get_or_insert_with(|| Instant::now() + timeout);
            if self.poll_until(cx, deadline) {
                return self.refuse(cx, HeadRefusal::Timeout);
            }
        } else {
            let since = *self.idle_since.get_or_insert_with(Instant::now);
            if self.poll_until(cx, since + self.idle_limit) {
                return Poll::Ready(Ok(())); // end of stream
            }
        }
        Poll::Pending
    }

    fn poll_read_header(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.shared.state.load(Ordering::Relaxed) > CLOSING {
            return Poll::Pending; // refused; the session is about to go
        }
        // Pingora reads again only while the header is incomplete.
        if let Some(refusal) = self.scan.over_limit() {
            return self.refuse(cx, refusal);
        }
        let before = buf.filled().len();
        let room = self.scan.room();
        let polled = if buf.remaining() > room {
            // Near a limit only: read no more than what would cross it.
            let mut scratch = vec![0u8; room];
            let mut limited = ReadBuf::new(&mut scratch);
            let polled = self.inner().poll_read(cx, &mut limited);
            buf.put_slice(limited.filled());
            polled
        } else {
            self.inner().poll_read(cx, buf)
        };
        match polled {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                match self.scan.feed(new) {
                    Ok(Some(end)) => self.after_head = (new.len() - end) as u64,
                    Ok(None) => {}
                    Err(refusal) => {
                        buf.set_filled(before);
                        return self.refuse(cx, refusal);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => self.poll_wait(cx),
            other => other,
        }
    }
}

impl Drop for EdgeStream {
    fn drop(&mut self) {
        // Closing after an error answer: the connection's loop lingers.
        if self.shared.state.load(Ordering::Relaxed) != SERVING {
            if let Ok(mut slot) = self.shared.stream.lock() {
                *slot = self.inner.take();
            }
        }
    }
}

impl AsyncRead for EdgeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.taken < this.held {
            // Read (and scanned, and counted) before the session existed.
            let early = &this.early[this.taken as usize..this.held as usize];
            let n = early.len().min(buf.remaining());
            buf.put_slice(&early[..n]);
            this.taken += n as u16;
            return Poll::Ready(Ok(()));
        }
        if !this.header_done.load(Ordering::Relaxed) {
            return this.poll_read_header(cx, buf);
        }
        let before = buf.filled().len();
        let polled = this.inner().poll_read(cx, buf);
        this.after_head += (buf.filled().len() - before) as u64;
        polled
    }
}

impl AsyncWrite for EdgeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().inner().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().inner().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().inner().poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for EdgeStream {
    async fn shutdown(&mut self) {
        if let Some(inner) = self.inner.as_mut() {
            Shutdown::shutdown(inner.as_mut()).await;
        }
    }
}

impl UniqueID for EdgeStream {
    fn id(&self) -> UniqueIDType {
        self.inner.as_ref().map_or(-1, |s| s.id())
    }
}

impl Ssl for EdgeStream {}

impl GetTimingDigest for EdgeStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner
            .as_ref()
            .map(|s| s.get_timing_digest())
            .unwrap_or_default()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |s| s.get_read_pending_time())
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner
            .as_ref()
            .map_or(Duration::ZERO, |s| s.get_write_pending_time())
    }
}

impl GetProxyDigest for EdgeStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.as_ref()?.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        if let Some(s) = self.inner.as_mut() {
            s.set_proxy_digest(digest);
        }
    }
}

impl GetSocketDigest for EdgeStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.as_ref()?.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        if let Some(s) = self.inner.as_mut() {
            s.set_socket_digest(digest);
        }
    }
}

#[async_trait]
impl Peek for EdgeStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        match self.inner.as_mut() {
            Some(s) => Peek::try_peek(s.as_mut(), buf).await,
            None => Ok(false),
        }
    }
}
