//! `X-Forwarded-*` and `Forwarded`: trusted only from `--trusted-proxies`.
//!
//! By default no client is trusted (as Caddy and Traefik do): whatever
//! forwarding headers a client sends are dropped, and `X-Forwarded-For`,
//! `-Proto` and `-Host` say what liveroll itself saw. Otherwise any client
//! could make an app build `https://evil.example/...` links (password-reset
//! poisoning) or pass as "secure". From a trusted proxy (a load balancer in
//! front) the headers are kept and the proxy's address is appended to
//! `X-Forwarded-For`, like nginx's `$proxy_add_x_forwarded_for`.

use std::io::Write;
use std::net::IpAddr;
use std::str::FromStr;

use http::header::{InvalidHeaderValue, HOST};
use http::{HeaderName, HeaderValue};
use pingora_core::{Error, ErrorType, Result};
use pingora_http::RequestHeader;

// Constants, so that no lookup parses a header name per request. (Headers
// are inserted by their usual spelling, which Pingora sends as given.)
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const HTTP: HeaderValue = HeaderValue::from_static("http");

/// An address block, `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            _ => false,
        }
    }
}

/// IPv4 clients of a dual-stack socket arrive as `::ffff:a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) & (0xffu8 << (8 - rest)) == 0
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let (addr, bits) = match s.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{s}' is not an address or CIDR block (e.g. 10.0.0.0/8)"))?;
        let net = canonical(net);
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("'{s}': prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { net, bits })
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct Trusted(Vec<Cidr>);

impl Trusted {
    pub fn new(blocks: Vec<Cidr>) -> Self {
        Trusted(blocks)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// Whether a client-sent header is a forwarding header that only a trusted
/// proxy may set: `Forwarded`, `X-Real-IP` and every `X-Forwarded-*`.
fn is_forwarding(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("x-forwarded-") || name == "forwarded" || name == "x-real-ip"
}

/// Sets the forwarding headers of a request going to a child. `client` is
/// the address of the connection's peer; `trusted` whether it is in
/// `--trusted-proxies`.
pub fn apply(req: &mut RequestHeader, client: Option<IpAddr>, trusted: bool) -> Result<()> {
    if !trusted {
        // Rare: most clients send none, and then nothing is allocated.
        if req.headers.keys().any(is_forwarding) {
            let spoofed: Vec<HeaderName> = req
                .headers
                .keys()
                .filter(|n| is_forwarding(n))
                .cloned()
                .collect();
            for name in spoofed {
                req.remove_header(&name);
            }
        }
    }
    if let Some(ip) = client {
        let prior = trusted.then(|| req.headers.get_all(&X_FORWARDED_FOR));
        let value = chain(prior, ip);
        req.insert_header("X-Forwarded-For", value.map_err(|_| bad_header())?)?;
    }
    if !req.headers.contains_key(&X_FORWARDED_PROTO) {
        req.insert_header("X-Forwarded-Proto", HTTP)?;
    }
    if !req.headers.contains_key(&X_FORWARDED_HOST) {
        if let Some(host) = req.headers.get(HOST).cloned() {
            req.insert_header("X-Forwarded-Host", host)?;
        }
    }
    Ok(())
}

/// `X-Forwarded-For`: the prior values (several header lines are one list),
/// then the client's address; formatted on the stack, as this runs for
/// every request.
fn chain(
    prior: Option<http::header::GetAll<'_, HeaderValue>>,
    ip: IpAddr,
) -> std::result::Result<HeaderValue, InvalidHeaderValue> {
    let prior = || {
        prior
            .iter()
            .flat_map(|all| all.iter())
            .filter(|v| !v.is_empty())
    };
    let mut buf = [0u8; 512];
    let mut out = std::io::Cursor::new(&mut buf[..]);
    let mut written = Ok(());
    for value in prior() {
        written = written
            .and_then(|_| out.write_all(value.as_bytes()))
            .and_then(|_| out.write_all(b", "));
    }
    match written.and_then(|_| write_ip(&mut out, ip)) {
        Ok(()) => {
            let len = out.position() as usize;
            HeaderValue::from_bytes(&buf[..len])
        }
        // A chain longer than the stack buffer is kept too.
        Err(_) => {
            let mut long = Vec::new();
            for value in prior() {
                long.extend_from_slice(value.as_bytes());
                long.extend_from_slice(b", ");
            }
            long.extend_from_slice(ip.to_string().as_bytes());
            HeaderValue::from_bytes(&long)
        }
    }
}

/// Writes an address as text. IPv4 by hand: `Display` goes through the
/// formatting machinery, about 1,000 instructions for every request.
fn write_ip(out: &mut impl Write, ip: IpAddr) -> std::io::Result<()> {
    let IpAddr::V4(v4) = ip else {
        return write!(out, "{ip}");
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    out.write_all(&text[..len])
}

fn bad_header() -> Box<Error> {
    Error::explain(ErrorType::InvalidHTTPHeader, "invalid X-Forwarded-For")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).unwrap();
        }
        req
    }

    fn values(req: &RequestHeader, name: &str) -> Vec<String> {
        req.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }

    const SPOOFED: &[(&str, &str)] = &[
        ("Host", "app.example"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-For", "7.7.7.7"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
        ("X-Forwarded-Prefix", "/evil"),
        ("Forwarded", "for=6.6.6.6"),
        ("X-Real-IP", "6.6.6.6"),
    ];

    #[test]
    fn an_untrusted_client_s_forwarding_headers_are_replaced() {
        let mut req = request(SPOOFED);
        apply(&mut req, Some("10.1.2.3".parse().unwrap()), false).unwrap();
        assert_eq!(values(&req, "x-forwarded-for"), ["10.1.2.3"]);
        assert_eq!(values(&req, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&req, "x-forwarded-host"), ["app.example"]);
        for gone in ["forwarded", "x-real-ip", "x-forwarded-prefix"] {
            assert!(values(&req, gone).is_empty(), "{gone}");
        }
    }

    #[test]
    fn a_trusted_proxy_s_forwarding_headers_are_kept() {
        let mut req = request(SPOOFED);
        apply(&mut req, Some("10.1.2.3".parse().unwrap()), true).unwrap();
        assert_eq!(
            values(&req, "x-forwarded-for"),
            ["6.6.6.6, 7.7.7.7, 10.1.2.3"]
        );
        assert_eq!(values(&req, "x-forwarded-proto"), ["https"]);
        assert_eq!(values(&req, "x-forwarded-host"), ["evil.example"]);
        assert_eq!(values(&req, "forwarded"), ["for=6.6.6.6"]);
    }

    #[test]
    fn without_forwarding_headers_the_proxy_s_view_is_set() {
        let mut req = request(&[("Host", "h")]);
        apply(&mut req, Some("::1".parse().unwrap()), true).unwrap();
        assert_eq!(values(&req, "x-forwarded-for"), ["::1"]);
        assert_eq!(values(&req, "x-forwarded-proto"), ["http"]);
        assert_eq!(values(&req, "x-forwarded-host"), ["h"]);
    }

    #[test]
    fn long_chains_are_kept_whole() {
        let long = "9.9.9.9, ".repeat(100) + "8.8.8.8";
        let mut req = request(&[("X-Forwarded-For", &long)]);
        apply(&mut req, Some("10.1.2.3".parse().unwrap()), true).unwrap();
        assert_eq!(
            values(&req, "x-forwarded-for"),
            [format!("{long}, 10.1.2.3")]
        );
    }

    #[test]
    fn addresses_are_written_like_display() {
        let mut addresses: Vec<IpAddr> = (0..=255u8)
            .map(|o| IpAddr::from([o, o / 10, 255 - o, o % 100]))
            .collect();
        addresses.push("::1".parse().unwrap());
        addresses.push("2001:db8::7".parse().unwrap());
        for ip in addresses {
            let mut out = Vec::new();
            write_ip(&mut out, ip).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn blocks_match_by_prefix() {
        let block: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(block.contains("10.200.3.4".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(!block.contains("11.0.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let odd: Cidr = "192.168.4.0/22".parse().unwrap();
        assert!(odd.contains("192.168.7.255".parse().unwrap()));
        assert!(!odd.contains("192.168.8.0".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
