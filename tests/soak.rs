//! The soak test: continuous mixed load across many rollovers, zero failures.
//!
//! `LIVEROLL_SOAK_ROLLOVERS` sets the number of rollovers (50 by default, so
//! CI stays quick); the long run in the README uses 500:
//! `LIVEROLL_SOAK_ROLLOVERS=500 cargo test --release --test soak -- --nocapture`.

mod common;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn no_request_fails_across_many_rollovers() {
    let rollovers: usize = std::env::var("LIVEROLL_SOAK_ROLLOVERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let scratch = Scratch::new();
    let liveroll = Liveroll::start(&scratch, &["--interval", "20ms"]);
    let mut pid = liveroll.wait_version("v1");
    let load = Load::start(
        liveroll.ports.proxy,
        &[
            "keep-alive GET",
            "keep-alive GET",
            "new-connection GET",
            "POST",
            "slow GET",
        ],
    );
    for round in 1..=rollovers {
        load.wait_progress(10);
        // SIGHUP and ID changes, mixed.
        if round % 2 == 0 {
            liveroll.signal(Signal::SIGHUP);
        } else {
            scratch.set_version(&format!("v{}", round + 1));
        }
        let new = liveroll.wait_pid_change(pid);
        wait_for("the retired child to exit", || {
            process_gone(pid).then_some(())
        });
        pid = new;
    }
    load.wait_progress(10);
    let (ok, failures) = load.finish();
    eprintln!(
        "soak: {rollovers} rollovers, {ok} requests, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(demo_pids(&scratch), vec![pid], "exactly one child is left");
}
