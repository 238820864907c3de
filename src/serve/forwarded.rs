//! `X-Forwarded-For`, formatted without the heap: it is written for every
//! request.

use std::io::Write;
use std::net::IpAddr;

use http::header::InvalidHeaderValue;
use http::HeaderValue;

/// `X-Forwarded-For`: the prior chain, if any, and the client's address;
/// formatted on the stack, as this runs for every request.
pub fn forwarded_for(
    prior: Option<&[u8]>,
    ip: IpAddr,
) -> std::result::Result<HeaderValue, InvalidHeaderValue> {
    let mut buf = [0u8; 512];
    let mut out = std::io::Cursor::new(&mut buf[..]);
    let written = match prior {
        Some(prior) => out
            .write_all(prior)
            .and_then(|_| out.write_all(b", "))
            .and_then(|_| write_ip(&mut out, ip)),
        None => write_ip(&mut out, ip),
    };
    match written {
        Ok(()) => {
            let len = out.position() as usize;
            HeaderValue::from_bytes(&buf[..len])
        }
        // A chain longer than the stack buffer is kept too.
        Err(_) => {
            let prior = String::from_utf8_lossy(prior.unwrap_or_default());
            HeaderValue::from_bytes(format!("{prior}, {ip}").as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_client() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(forwarded_for(None, ip).unwrap(), "10.1.2.3");
        assert_eq!(
            forwarded_for(Some(b"1.1.1.1"), ip).unwrap(),
            "1.1.1.1, 10.1.2.3"
        );
        let long = "9.9.9.9, ".repeat(100) + "8.8.8.8";
        let value = forwarded_for(Some(long.as_bytes()), ip).unwrap();
        assert_eq!(value.to_str().unwrap(), format!("{long}, 10.1.2.3"));
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
}
