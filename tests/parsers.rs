//! Property tests for everything liveroll parses itself: durations, the
//! `--exec` template, the `--id` output and the Pingora YAML keys. Random
//! input must never panic, and valid input must parse to what it says.

use std::time::Duration;

use liveroll::config::parse_duration;
use liveroll::process::command::{expand, parse_id, MAX_ID_BYTES};
use liveroll::server_conf;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn durations_never_panic(text in ".{0,40}") {
        let _ = parse_duration(&text);
    }

    #[test]
    fn durations_with_a_unit_parse_exactly(n in 0u64..1_000_000, unit in 0usize..6) {
        let (suffix, nanos) = [("ns", 1), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000),
            ("m", 60_000_000_000), ("h", 3_600_000_000_000)][unit];
        let parsed = parse_duration(&format!("{n}{suffix}")).unwrap();
        prop_assert_eq!(parsed, Duration::from_nanos(n * nanos));
    }

    #[test]
    fn bare_numbers_are_refused(n in 0u64..1_000_000) {
        prop_assert!(parse_duration(&n.to_string()).is_err());
    }

    #[test]
    fn templates_without_placeholders_are_unchanged(template in "[^<]{0,60}", port in 1u16.., path in "/[a-z]{0,10}") {
        prop_assert_eq!(expand(&template, port, &path, "v1"), template);
    }

    #[test]
    fn placeholders_are_replaced_where_they_stand(
        a in "[^<]{0,20}", b in "[^<]{0,20}", c in "[^<]{0,20}", port in 1u16.., path in "/[a-z/]{0,10}",
    ) {
        let template = format!("{a}<<PORT>>{b}<<HEALTHCHECK>>{c}<<PORT>>");
        prop_assert_eq!(expand(&template, port, &path, "v1"), format!("{a}{port}{b}{path}{c}{port}"));
    }

    #[test]
    fn the_id_is_put_in_as_printed_and_never_expanded_again(
        a in "[^<]{0,20}", id in "[!-~]{1,30}", port in 1u16..,
    ) {
        let template = format!("{a}<<ID>>:<<PORT>>");
        prop_assert_eq!(expand(&template, port, "/h", &id), format!("{a}{id}:{port}"));
    }

    #[test]
    fn ids_never_panic_and_are_clean_when_accepted(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(id) = parse_id(&bytes) {
            prop_assert!(!id.is_empty());
            prop_assert_eq!(id.trim(), id.as_str());
            prop_assert!(!id.chars().any(char::is_control));
            prop_assert!(id.len() <= bytes.len());
        }
    }

    #[test]
    fn printable_ids_round_trip(id in "[!-~][ -~]{0,60}[!-~]", pad in "[ \t\r\n]{0,4}") {
        let out = format!("{pad}{id}{pad}");
        prop_assert_eq!(parse_id(out.as_bytes()).unwrap(), id);
    }

    #[test]
    fn conf_text_never_panics(text in ".{0,80}") {
        let _ = server_conf::parse(&text);
    }

    #[test]
    fn unknown_conf_keys_are_named(key in "[a-z][a-z_]{2,20}_x") {
        let err = server_conf::parse(&format!("version: 1\n{key}: 1\n")).unwrap_err();
        prop_assert!(err.contains(&format!("unknown key `{key}`")), "{}", err);
    }

    #[test]
    fn known_conf_keys_with_valid_values_parse(threads in 1usize..64, pool in 0usize..10_000, steal in any::<bool>()) {
        let text = format!("version: 1\nthreads: {threads}\nupstream_keepalive_pool_size: {pool}\nwork_stealing: {steal}\n");
        let conf = server_conf::parse(&text).unwrap();
        prop_assert_eq!((conf.threads, conf.upstream_keepalive_pool_size, conf.work_stealing), (threads, pool, steal));
    }
}

#[test]
fn an_id_of_megabytes_is_refused() {
    let big = vec![b'a'; MAX_ID_BYTES + 1];
    let err = parse_id(&big).unwrap_err().to_string();
    assert!(err.contains("more than 4096 bytes"), "{err}");
}
