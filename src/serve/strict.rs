//! HTTP/1.1 at the edge, per request: the checks a request must pass before
//! anything of it reaches a child, and the fixes a child's response gets
//! before it reaches the client. Called from small hooks in the proxy; the
//! connection-level rules (header and keep-alive timeouts, 414/431,
//! malformed request lines, the connection limit) are in `connection`,
//! `stream`, `head` and `admission`.
//!
//! Nothing here allocates or formats on the path of an accepted request.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::Version;
use pingora_core::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// The body a request announced, as it is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body: no Content-Length (or 0) and no Transfer-Encoding.
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked: the wire length is known only once it has been read.
    Chunked,
}

impl Body {
    /// The body's length on the wire, if the header says it.
    pub fn wire_len(self) -> Option<u64> {
        match self {
            Body::None => Some(0),
            Body::Length(n) => Some(n),
            Body::Chunked => None,
        }
    }
}

/// Why a request is answered by liveroll instead of a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400, with the reason.
    BadRequest(&'static str),
    /// 413: the body is larger than `--max-body-size`.
    TooLarge,
}

impl Refusal {
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::TooLarge => 413,
        }
    }

    fn text(self) -> String {
        match self {
            Refusal::BadRequest(why) => format!("400 Bad Request: {why}\n"),
            Refusal::TooLarge => {
                "413 Content Too Large: the request body exceeds the limit\n".into()
            }
        }
    }
}

/// Checks what Pingora lets through but nginx and HAProxy refuse, and the
/// body limit; returns how the body is framed.
///
/// - `Content-Length: 5, 5` or two `Content-Length` lines: Pingora accepts
///   identical values (RFC 9110 §8.6 allows either) and forwards the header
///   as it came, so a child that reads it differently would frame the
///   stream differently. nginx answers 400; so does liveroll.
/// - An HTTP/1.1 request without `Host` (RFC 9112 §3.2: a server MUST
///   answer 400).
/// - A `Content-Length` over `max_body` (`--max-body-size`): 413. A chunked
///   body is counted as it arrives ([`BodyLimit`]).
pub fn check_request(req: &RequestHeader, max_body: Option<u64>) -> Result<Body, Refusal> {
    // One pass over the (few) fields: standard names compare as enum tags,
    // where three map lookups would hash three names.
    let (mut host, mut chunked, mut length) = (false, false, None);
    for (name, value) in req.headers.iter() {
        if *name == HOST {
            host = true;
        } else if *name == TRANSFER_ENCODING {
            chunked = true;
        } else if *name == CONTENT_LENGTH {
            if length.is_some() {
                return Err(Refusal::BadRequest("more than one Content-Length"));
            }
            length = Some(value);
        }
    }
    if !host && req.version == Version::HTTP_11 {
        return Err(Refusal::BadRequest("HTTP/1.1 request without Host"));
    }
    if chunked {
        // Pingora has checked that chunked is last, and dropped any
        // Content-Length next to it (closing the connection afterwards).
        return Ok(Body::Chunked);
    }
    let Some(length) = length else {
        return Ok(Body::None);
    };
    let length = parse_length(length.as_bytes())
        .ok_or(Refusal::BadRequest("Content-Length is not a single number"))?;
    if max_body.is_some_and(|max| length > max) {
        return Err(Refusal::TooLarge);
    }
    Ok(if length == 0 {
        Body::None
    } else {
        Body::Length(length)
    })
}

/// A decimal length, digits only (Pingora has rejected anything else except
/// lists of equal values, which are refused here).
fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Counts a chunked request body against `--max-body-size`.
#[derive(Debug, Default)]
pub struct BodyLimit {
    seen: u64,
}

impl BodyLimit {
    /// Adds `len` body bytes; `Err` once the total exceeds `max`.
    pub fn add(&mut self, len: usize, max: u64) -> Result<(), Refusal> {
        self.seen += len as u64;
        if self.seen > max {
            Err(Refusal::TooLarge)
        } else {
            Ok(())
        }
    }
}

/// Answers a refused request and closes the connection (Pingora's error
/// responses always close).
pub async fn refuse(session: &mut Session, refusal: Refusal) -> Result<()> {
    let body = Bytes::from(refusal.text());
    let mut resp = ResponseHeader::build(refusal.status(), Some(3))?;
    resp.insert_header("Content-Type", "text/plain")?;
    resp.insert_header("Content-Length", body.len())?;
    session
        .as_downstream_mut()
        .write_error_response(resp, body)
        .await
}

/// A child's response on its way to the client.
///
/// - liveroll speaks HTTP/1.1 whatever the child does: an intermediary sends
///   its own version (RFC 9110 §6.2), and an `HTTP/1.0` status line with
///   `Connection: keep-alive` (which Pingora passes through) misleads
///   HTTP/1.0-era clients.
/// - An HTTP/1.0 client cannot read chunked encoding (RFC 9112 §6.1), which
///   Pingora uses for any response without Content-Length: the body is sent
///   as it comes and the connection closed to end it.
pub fn fix_response(session: &mut Session, resp: &mut ResponseHeader) {
    if resp.version != Version::HTTP_11 {
        resp.set_version(Version::HTTP_11);
    }
    if session.req_header().version < Version::HTTP_11
        && resp.headers.contains_key(TRANSFER_ENCODING)
    {
        resp.remove_header(&TRANSFER_ENCODING);
        // Chunked framing came from the child or from Pingora; either way
        // any Content-Length beside it does not describe the decoded body.
        resp.remove_header(&CONTENT_LENGTH);
        session.set_keepalive(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("POST", b"/", None).unwrap();
        req.set_version(version);
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    #[test]
    fn ambiguous_lengths_are_refused() {
        let one = req(Version::HTTP_11, &[("Host", "h"), ("Content-Length", "5")]);
        assert_eq!(check_request(&one, None), Ok(Body::Length(5)));
        let list = req(
            Version::HTTP_11,
            &[("Host", "h"), ("Content-Length", "5, 5")],
        );
        assert!(matches!(
            check_request(&list, None),
            Err(Refusal::BadRequest(_))
        ));
        let two = req(
            Version::HTTP_11,
            &[
                ("Host", "h"),
                ("Content-Length", "5"),
                ("Content-Length", "5"),
            ],
        );
        assert!(matches!(
            check_request(&two, None),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn http11_needs_host_and_http10_does_not() {
        let bare = req(Version::HTTP_11, &[]);
        assert!(check_request(&bare, None).is_err());
        let old = req(Version::HTTP_10, &[]);
        assert_eq!(check_request(&old, None), Ok(Body::None));
    }

    #[test]
    fn the_body_limit_applies_to_content_length_and_chunks() {
        let r = req(Version::HTTP_11, &[("Host", "h"), ("Content-Length", "11")]);
        assert_eq!(check_request(&r, Some(10)), Err(Refusal::TooLarge));
        assert_eq!(check_request(&r, Some(11)), Ok(Body::Length(11)));
        let chunked = req(
            Version::HTTP_11,
            &[("Host", "h"), ("Transfer-Encoding", "chunked")],
        );
        assert_eq!(check_request(&chunked, Some(1)), Ok(Body::Chunked));
        let mut limit = BodyLimit::default();
        assert!(limit.add(6, 10).is_ok());
        assert_eq!(limit.add(5, 10), Err(Refusal::TooLarge));
    }

    #[test]
    fn lengths_are_plain_decimals() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        assert_eq!(parse_length(b"5, 5"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
    }
}
