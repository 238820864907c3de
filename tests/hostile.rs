//! Broken and hostile clients: each gets a clean error or a closed
//! connection, and the proxy keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};

use common::*;

/// Sends `bytes`, half-closes, and returns what came back (status line, or
/// empty if the proxy just closed the connection).
fn throw(port: u16, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    // The proxy may close before reading everything; a failed write is an answer too.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn malformed_and_oversized_requests_are_refused_and_the_proxy_stays_up() {
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &[]);
    liveroll.wait_version("v1");
    let port = liveroll.ports.proxy;

    // A client that connects and sends nothing must not hold up the others.
    let _idle = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    let mut partial = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\nHost: slow").unwrap();

    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(2 << 20)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..400)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let huge_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(2 << 20));
    // (name, bytes, the status line expected, whether it may be lost to a
    // reset: for the oversized ones the proxy answers before it has read
    // everything; it then reads on for a while before closing, but the
    // client may send more than that).
    const BAD: &str = "HTTP/1.1 400 Bad Request";
    let cases: Vec<(&str, Vec<u8>, &str, bool)> = vec![
        (
            "binary garbage",
            (0u8..=255).cycle().take(5000).collect(),
            BAD,
            true,
        ),
        ("not HTTP", b"HELLO THERE\r\n\r\n".to_vec(), BAD, false),
        (
            "bad version",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
            BAD,
            false,
        ),
        (
            "space in header name",
            b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n".to_vec(),
            BAD,
            false,
        ),
        (
            "two content lengths",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc"
                .to_vec(),
            BAD,
            false,
        ),
        (
            "bad chunk size",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            BAD,
            false,
        ),
        (
            "header over 1 MiB",
            huge_header.into_bytes(),
            "HTTP/1.1 431 Request Header Fields Too Large",
            true,
        ),
        ("400 headers", many_headers.into_bytes(), BAD, true),
        (
            "URI over 1 MiB",
            huge_uri.into_bytes(),
            "HTTP/1.1 414 URI Too Long",
            true,
        ),
    ];
    for (name, bytes, want, may_reset) in &cases {
        let answer = throw(port, bytes);
        let ok = answer == *want || (*may_reset && answer.is_empty());
        assert!(ok, "{name}: expected {want:?}, got {answer:?}");
        // After each one, ordinary requests are still served.
        let r = liveroll.get("/").unwrap();
        assert_eq!(r.status, 200, "after {name}: {}", r.body);
    }
    liveroll.assert_running();
}
