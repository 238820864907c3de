//! A request header as it arrives: the checks liveroll makes on the bytes
//! Pingora reads, before Pingora has parsed them, and the answers it gives
//! when they fail. Pingora percent-encodes a space or control byte in the
//! request target and forwards it, and answers any header over 1 MiB with a
//! bare 400; liveroll refuses the first with 400 and sizes over
//! [`MAX_LINE`] and [`MAX_FIELDS`] with 414 and 431 (see `stream`, which
//! feeds the scan, and `connection`, which writes the answer).

/// Longest request line (method, target, version) accepted; longer: 414.
pub const MAX_LINE: usize = 64 * 1024;
/// Most bytes of header fields accepted after the request line; more: 431.
pub const MAX_FIELDS: usize = 64 * 1024;

/// Why a request header was refused by liveroll (`stream::EdgeStream`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    /// 400: a space too many or a control character in the request line.
    BadLine = 2,
    /// 408: not complete within `--header-timeout`.
    Timeout = 3,
    /// 414: request line over [`MAX_LINE`].
    LineTooLong = 4,
    /// 431: header fields over [`MAX_FIELDS`].
    FieldsTooLarge = 5,
}

impl HeadRefusal {
    pub(super) fn from_state(state: u8) -> Option<Self> {
        match state {
            2 => Some(HeadRefusal::BadLine),
            3 => Some(HeadRefusal::Timeout),
            4 => Some(HeadRefusal::LineTooLong),
            5 => Some(HeadRefusal::FieldsTooLarge),
            _ => None,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            HeadRefusal::BadLine => 400,
            HeadRefusal::Timeout => 408,
            HeadRefusal::LineTooLong => 414,
            HeadRefusal::FieldsTooLarge => 431,
        }
    }

    /// The whole answer, status line to body; built only when needed.
    pub fn response(self) -> Vec<u8> {
        let (status, body) = match self {
            HeadRefusal::BadLine => (
                "400 Bad Request",
                "400 Bad Request: malformed request line\n".to_string(),
            ),
            HeadRefusal::Timeout => (
                "408 Request Timeout",
                "408 Request Timeout: the request header was not complete in time\n".to_string(),
            ),
            HeadRefusal::LineTooLong => (
                "414 URI Too Long",
                format!("414 URI Too Long: the request line is over {MAX_LINE} bytes\n"),
            ),
            HeadRefusal::FieldsTooLarge => (
                "431 Request Header Fields Too Large",
                format!(
                    "431 Request Header Fields Too Large: the header is over {MAX_FIELDS} bytes\n"
                ),
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Where a request header's scan is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Before the request line: empty lines are skipped (RFC 9112 §2.2).
    Leading,
    /// In the request line.
    Line,
    /// In the header fields.
    Fields,
    /// Past the blank line that ends the header.
    Done,
    /// The header's start is not known (Pingora had read part of it along
    /// with an earlier request): only its size is counted.
    Blind,
}

/// The shortest request line, `M / HTTP/1.1`: a pipelined prefix shorter
/// than this ends inside the request line (or before it).
const MIN_LINE: u64 = 12;

/// The checks on a request header, fed with the bytes as Pingora reads
/// them. Only the request line is looked at byte by byte; the fields are
/// skipped line by line with `memchr`, looking for the blank line.
#[derive(Debug, Clone, Copy)]
pub(super) struct Scan {
    pub(super) mode: Mode,
    /// Bytes of the header seen, including a known pipelined prefix.
    head: usize,
    /// Bytes of the request line seen (without its LF).
    line: usize,
    spaces: u8,
    /// The last line byte was a CR: only LF may follow.
    cr: bool,
    /// In the fields: 1 after an LF, 2 after LF CR; 0 inside a field line.
    nl: u8,
    /// `head` where the fields began.
    fields_start: usize,
}

impl Scan {
    pub(super) fn fresh() -> Scan {
        Scan {
            mode: Mode::Leading,
            head: 0,
            line: 0,
            spaces: 0,
            cr: false,
            nl: 0,
            fields_start: 0,
        }
    }

    /// The next request's scan, `prefix` being how many of its bytes were
    /// read with the previous request (`None`: not known).
    pub(super) fn after(prefix: Option<u64>) -> Scan {
        match prefix {
            Some(0) => Scan::fresh(),
            // Inside the request line: what is left of it is still checked
            // (a substring of a good line has no third space and no
            // control byte).
            Some(p) if p < MIN_LINE => Scan {
                mode: Mode::Line,
                head: p as usize,
                line: p as usize,
                ..Scan::fresh()
            },
            Some(p) => Scan {
                mode: Mode::Blind,
                head: p.min(usize::MAX as u64) as usize,
                ..Scan::fresh()
            },
            None => Scan {
                mode: Mode::Blind,
                ..Scan::fresh()
            },
        }
    }

    /// Whether any byte of the header has been seen.
    pub(super) fn started(&self) -> bool {
        self.head > 0
    }

    /// Checked when Pingora reads again, i.e. the header is still
    /// incomplete after everything seen so far.
    pub(super) fn over_limit(&self) -> Option<HeadRefusal> {
        match self.mode {
            Mode::Leading | Mode::Line if self.line > MAX_LINE => Some(HeadRefusal::LineTooLong),
            Mode::Fields if self.head - self.fields_start > MAX_FIELDS => {
                Some(HeadRefusal::FieldsTooLarge)
            }
            _ if self.head > MAX_LINE + MAX_FIELDS => Some(HeadRefusal::FieldsTooLarge),
            _ => None,
        }
    }

    /// How much may be read before a limit is crossed by one byte, which
    /// makes the limit exact: if the header is not complete by then, Pingora
    /// reads again and [`Self::over_limit`] answers.
    pub(super) fn room(&self) -> usize {
        let total = (MAX_LINE + MAX_FIELDS + 1).saturating_sub(self.head);
        let room = match self.mode {
            Mode::Leading | Mode::Line => (MAX_LINE + 1).saturating_sub(self.line).min(total),
            Mode::Fields => (self.fields_start + MAX_FIELDS + 1).saturating_sub(self.head),
            Mode::Blind => total,
            Mode::Done => usize::MAX,
        };
        room.max(1)
    }

    /// Takes the next bytes read. `Ok(Some(n))`: the header ends after the
    /// first `n` of them.
    pub(super) fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, HeadRefusal> {
        let mut i = 0;
        if self.mode == Mode::Leading {
            while i < bytes.len() && matches!(bytes[i], b'\r' | b'\n') {
                i += 1;
            }
            if i < bytes.len() {
                self.mode = Mode::Line;
            }
        }
        if self.mode == Mode::Line {
            let rest = &bytes[i..];
            let end = memchr::memchr(b'\n', rest);
            let part = &rest[..end.unwrap_or(rest.len())];
            // Branch-free over the part (it vectorizes): spaces, and bytes
            // no request line may hold (controls but CR, and DEL).
            let (mut spaces, mut bad) = (0usize, false);
            for &b in part {
                spaces += usize::from(b == b' ');
                bad |= (b < 0x20 && b != b'\r') | (b == 0x7f);
            }
            // A CR only right before the LF: after a CR that ended the last
            // read, nothing else may come.
            let cr_at = memchr::memchr(b'\r', part);
            let cr_ok = match cr_at {
                None => true,
                Some(at) => at + 1 == part.len(),
            };
            self.spaces = self.spaces.saturating_add(spaces.min(255) as u8);
            if bad || !cr_ok || (self.cr && !part.is_empty()) || self.spaces > 2 {
                return Err(HeadRefusal::BadLine);
            }
            self.line += part.len();
            self.cr = cr_at.is_some();
            match end {
                Some(at) => {
                    if self.line > MAX_LINE {
                        return Err(HeadRefusal::LineTooLong);
                    }
                    i += at + 1;
                    self.mode = Mode::Fields;
                    self.nl = 1;
                    self.fields_start = self.head + i;
                }
                None => i = bytes.len(),
            }
        }
        if self.mode == Mode::Fields {
            while i < bytes.len() {
                if self.nl > 0 {
                    match bytes[i] {
                        b'\n' => {
                            self.mode = Mode::Done;
                            self.head += i + 1;
                            return Ok(Some(i + 1));
                        }
                        b'\r' if self.nl == 1 => {
                            self.nl = 2;
                            i += 1;
                            continue;
                        }
                        _ => self.nl = 0,
                    }
                }
                match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        i += at + 1;
                        self.nl = 1;
                    }
                    None => i = bytes.len(),
                }
            }
        } else if self.mode == Mode::Done {
            // Pingora read on after the end seen here: they disagree, so
            // this connection's accounting is no longer trusted.
            self.mode = Mode::Blind;
        }
        self.head += bytes.len();
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn feed_all(scan: &mut Scan, parts: &[&[u8]]) -> Result<Option<usize>, HeadRefusal> {
        let mut end = None;
        for part in parts {
            end = scan.feed(part)?;
            if end.is_some() {
                break;
            }
        }
        Ok(end)
    }

    #[test]
    fn finds_the_end_of_a_header_wherever_reads_split_it() {
        let request = b"\r\nGET /a?b=c HTTP/1.1\r\nHost: x\r\nUser-Agent: a b c\r\n\r\nBODY";
        let end = request.len() - 4;
        for split in 0..request.len() {
            let mut scan = Scan::fresh();
            let (a, b) = request.split_at(split);
            let got = match scan.feed(a).unwrap() {
                Some(n) => n,
                None => split + scan.feed(b).unwrap().expect("end found"),
            };
            assert_eq!(got, end, "split at {split}");
            assert_eq!(scan.mode, Mode::Done);
            assert_eq!(scan.head, end);
        }
    }

    #[test]
    fn bare_lf_headers_and_no_fields_end_too() {
        let mut scan = Scan::fresh();
        assert_eq!(scan.feed(b"GET / HTTP/1.0\n\nX"), Ok(Some(16)));
        let mut scan = Scan::fresh();
        assert_eq!(scan.feed(b"GET / HTTP/1.0\r\n\r\n"), Ok(Some(18)));
        let mut scan = Scan::fresh();
        assert_eq!(scan.feed(b"GET / HTTP/1.1\nHost: x\n\n"), Ok(Some(24)));
    }

    #[test]
    fn malformed_request_lines_are_refused() {
        for bad in [
            &b"GET /a b HTTP/1.1\r\n"[..],
            b"GET /a\0b HTTP/1.1\r\n",
            b"GET /a\tb HTTP/1.1\r\n",
            b"GET /a\x7fb HTTP/1.1\r\n",
            b"GET /a\rb HTTP/1.1\r\n",
        ] {
            let mut scan = Scan::fresh();
            assert_eq!(
                feed_all(&mut scan, &[bad]),
                Err(HeadRefusal::BadLine),
                "{}",
                bad.escape_ascii()
            );
        }
        // Controls in fields are Pingora's to refuse, a body is not looked at.
        let mut scan = Scan::fresh();
        assert_eq!(
            scan.feed(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n\0\0 a b c d"),
            Ok(Some(28))
        );
    }

    #[test]
    fn a_pipelined_prefix_inside_the_line_still_checks_the_rest() {
        let mut scan = Scan::after(Some(1));
        assert_eq!(
            scan.feed(b"ET /a b HTTP/1.1\r\n\r\n"),
            Err(HeadRefusal::BadLine)
        );
        let mut scan = Scan::after(Some(1));
        assert_eq!(scan.feed(b"ET / HTTP/1.1\r\n\r\n"), Ok(Some(17)));
        assert_eq!(scan.head, 18);
        // A longer prefix may end anywhere: only the size counts.
        let mut scan = Scan::after(Some(40));
        assert_eq!(scan.feed(b"X-A: a b c d e\r\n\r\n"), Ok(None));
        assert_eq!(scan.mode, Mode::Blind);
        let mut scan = Scan::after(None);
        assert_eq!(scan.feed(b"a b c d\0"), Ok(None));
    }

    #[test]
    fn limits_are_exact() {
        // A request line of exactly MAX_LINE bytes passes.
        let mut scan = Scan::fresh();
        let mut line = b"GET /".to_vec();
        line.resize(MAX_LINE - 10, b'a');
        line.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(line.len(), MAX_LINE + 1);
        assert_eq!(scan.feed(&line), Ok(None));
        assert_eq!(scan.over_limit(), None);
        // One more byte in the line is 414, when found or when read again.
        let mut scan = Scan::fresh();
        let mut long = b"GET /".to_vec();
        long.resize(MAX_LINE - 9, b'a');
        long.extend_from_slice(b" HTTP/1.1\r\n");
        assert_eq!(scan.feed(&long), Err(HeadRefusal::LineTooLong));
        let mut scan = Scan::fresh();
        assert_eq!(scan.room(), MAX_LINE + 1);
        assert_eq!(scan.feed(&vec![b'a'; MAX_LINE + 1]), Ok(None));
        assert_eq!(scan.over_limit(), Some(HeadRefusal::LineTooLong));
        // Fields: up to MAX_FIELDS after the line.
        let mut scan = Scan::fresh();
        scan.feed(b"GET / HTTP/1.1\r\n").unwrap();
        assert_eq!(scan.room(), MAX_FIELDS + 1);
        assert_eq!(scan.feed(&vec![b'h'; MAX_FIELDS]), Ok(None));
        assert_eq!(scan.over_limit(), None);
        assert_eq!(scan.feed(b"h"), Ok(None));
        assert_eq!(scan.over_limit(), Some(HeadRefusal::FieldsTooLarge));
    }
}
