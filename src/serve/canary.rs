//! Which side of a canary a request belongs on, and keeping a client there.
//!
//! While a new child bakes with `--canary PERCENT`, a client is sent to it
//! or kept on the stable child, and stays there for the whole window: with
//! a cookie the proxy sets on the first answer (`--canary-by cookie`, the
//! default), or by a hash of the client's address (`--canary-by address`).
//! WebSockets and streams are ordinary requests here and follow the same
//! rule. Only runs while a canary does.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use pingora_http::RequestHeader;

use super::backends::{Canary, Side};

pub const COOKIE: &str = "liveroll_canary";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Cookie,
    Address,
}

/// The side for one request, and the cookie to set if it had none.
pub fn side(
    req: &RequestHeader,
    client: Option<IpAddr>,
    canary: &Canary,
    by: By,
    turn: &AtomicUsize,
) -> (Side, Option<String>) {
    let percent = canary.percent as usize;
    match by {
        By::Address => {
            let ip = client.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            (choose(hash(ip) % 100 < percent as u64), None)
        }
        By::Cookie => {
            if let Some(side) = cookie_side(req, canary.generation) {
                return (side, None);
            }
            // Without a cookie yet: every hundred new clients, `percent` go
            // to the canary, spread evenly.
            let n = turn.fetch_add(1, Ordering::Relaxed) % 100;
            let side = choose(n * percent % 100 < percent);
            (side, Some(set_cookie(canary.generation, side)))
        }
    }
}

fn choose(canary: bool) -> Side {
    if canary {
        Side::Canary
    } else {
        Side::Stable
    }
}

/// The side a request's cookie names, if the cookie is for this canary.
fn cookie_side(req: &RequestHeader, generation: u64) -> Option<Side> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .find_map(|pair| {
            let value = pair
                .trim_ascii()
                .strip_prefix(COOKIE.as_bytes())?
                .strip_prefix(b"=")?;
            let (gen, side) = std::str::from_utf8(value).ok()?.split_once('-')?;
            if gen.parse::<u64>().ok()? != generation {
                return None;
            }
            match side {
                "c" => Some(Side::Canary),
                "s" => Some(Side::Stable),
                _ => None,
            }
        })
}

/// The `Set-Cookie` value that keeps a client on `side` of this canary.
fn set_cookie(generation: u64, side: Side) -> String {
    let side = match side {
        Side::Canary => "c",
        Side::Stable => "s",
    };
    format!("{COOKIE}={generation}-{side}; Path=/; HttpOnly; SameSite=Lax")
}

/// FNV-1a over the address bytes: stable across restarts and processes.
fn hash(ip: IpAddr) -> u64 {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: Canary = Canary {
        generation: 7,
        percent: 10,
    };

    fn request(cookie: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(cookie) = cookie {
            req.insert_header("Cookie", cookie).unwrap();
        }
        req
    }

    #[test]
    fn new_clients_are_split_by_the_percentage_and_told_their_side() {
        let turn = AtomicUsize::new(0);
        let mut canary = 0;
        for _ in 0..1000 {
            let (side, cookie) = side(&request(None), None, &CANARY, By::Cookie, &turn);
            let cookie = cookie.expect("a new client gets a cookie");
            if side == Side::Canary {
                canary += 1;
                assert!(cookie.starts_with("liveroll_canary=7-c;"), "{cookie}");
            } else {
                assert!(cookie.starts_with("liveroll_canary=7-s;"), "{cookie}");
            }
        }
        assert_eq!(canary, 100);
    }

    #[test]
    fn a_cookie_keeps_its_side_for_this_canary_only() {
        let turn = AtomicUsize::new(0);
        for (cookie, want) in [
            ("a=b; liveroll_canary=7-c", Side::Canary),
            ("liveroll_canary=7-s;x=y", Side::Stable),
        ] {
            let got = side(&request(Some(cookie)), None, &CANARY, By::Cookie, &turn);
            assert_eq!(got, (want, None), "{cookie}");
        }
        // A cookie from an earlier canary is decided again.
        let (_, cookie) = side(
            &request(Some("liveroll_canary=6-c")),
            None,
            &CANARY,
            By::Cookie,
            &turn,
        );
        assert!(cookie.is_some());
    }

    #[test]
    fn by_address_a_client_always_lands_on_the_same_side() {
        let turn = AtomicUsize::new(0);
        let mut canary = 0;
        for i in 0..=255u8 {
            for j in [1u8, 77] {
                let ip = IpAddr::from([10, j, i, 3]);
                let (first, cookie) = side(&request(None), Some(ip), &CANARY, By::Address, &turn);
                assert_eq!(cookie, None);
                let (again, _) = side(&request(None), Some(ip), &CANARY, By::Address, &turn);
                assert_eq!(first, again);
                canary += usize::from(first == Side::Canary);
            }
        }
        // About 10% of 512 addresses.
        assert!((20..=90).contains(&canary), "{canary}");
    }
}
