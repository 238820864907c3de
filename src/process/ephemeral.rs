//! The kernel's ephemeral port range, which a child port should stay out
//! of: any outgoing connection on the host (liveroll's own to the other
//! child included) may be given such a port as its local port, and then the
//! child cannot bind it ("already in use", also while that socket sits in
//! TIME-WAIT).

/// The ephemeral range (`ip_local_port_range`) if `port` is inside it and
/// not reserved from it (`ip_local_reserved_ports`).
pub fn range_holding(port: u16) -> Option<(u16, u16)> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let reserved =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    holding(&range, &reserved, port)
}

fn holding(range: &str, reserved: &str, port: u16) -> Option<(u16, u16)> {
    let mut bounds = range.split_whitespace().map(|p| p.parse::<u16>().ok());
    let (lo, hi) = (bounds.next()??, bounds.next()??);
    ((lo..=hi).contains(&port) && !in_port_list(reserved, port)).then_some((lo, hi))
}

/// Whether `port` is in a list like `8080,9100-9199`.
fn in_port_list(list: &str, port: u16) -> bool {
    list.trim().split(',').any(|item| {
        let mut ends = item.trim().splitn(2, '-').map(|p| p.trim().parse::<u16>());
        match (ends.next(), ends.next()) {
            (Some(Ok(lo)), Some(Ok(hi))) => (lo..=hi).contains(&port),
            (Some(Ok(one)), None) => one == port,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_port_lists_are_read() {
        assert!(in_port_list("8080,9100-9199", 9150));
        assert!(in_port_list(" 8080 ", 8080));
        assert!(!in_port_list("8080,9100-9199", 9200));
        assert!(!in_port_list("", 1));
    }

    #[test]
    fn only_unreserved_ports_in_the_range_count() {
        let range = "32768\t60999\n";
        assert_eq!(holding(range, "", 40000), Some((32768, 60999)));
        assert_eq!(holding(range, "40000-40010\n", 40000), None);
        assert_eq!(holding(range, "", 9101), None);
        assert_eq!(holding("garbage", "", 40000), None);
    }
}
