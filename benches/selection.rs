//! The proxy's per-request backend pick: `BackendSet::select()` and the drop
//! of the lease it returns (what the proxy does once per request), in
//! nanoseconds per selection.
//!
//! Cases: one backend, two backends (the set during a rollover), and two
//! threads selecting from the same two-backend set at once (two Pingora
//! worker threads). For the contended case the figure is the wall time per
//! selection seen by one thread while the other thread selects too.
//!
//! Run: `cargo bench --bench selection`

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use liveroll::serve::backends::{Backend, BackendSet};

fn set_of(n: u16) -> Arc<BackendSet> {
    let set = Arc::new(BackendSet::new());
    for i in 0..n {
        let addr = SocketAddr::from(([127, 0, 0, 1], 9101 + i));
        set.publish(Backend::new(addr, u64::from(i) + 1));
    }
    set
}

/// One selection as the proxy does it: pick, look at the backend, release.
#[inline(always)]
fn select_once(set: &BackendSet) {
    let lease = set.select().expect("the set is not empty");
    black_box(lease.backend().addr);
    drop(lease);
}

fn selection(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    group.throughput(Throughput::Elements(1));

    for n in [1u16, 2] {
        let set = set_of(n);
        group.bench_function(
            format!("{n}_backend{}", if n > 1 { "s" } else { "" }),
            |b| b.iter(|| select_once(black_box(&set))),
        );
    }

    // Two threads on the same set. Each thread waits at the barrier, then
    // times its own `iters` selections; the result is the slower thread's
    // time, so `time / iters` is the per-selection wall time of one thread
    // while both are selecting. Spawning the threads is outside the timing.
    const THREADS: usize = 2;
    let set = set_of(2);
    group.bench_function("2_backends_2_threads", |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(THREADS));
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    let set = set.clone();
                    let barrier = barrier.clone();
                    thread::spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..iters {
                            select_once(black_box(&set));
                        }
                        start.elapsed()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("selection thread panicked"))
                .max()
                .unwrap_or(Duration::ZERO)
        })
    });
    group.finish();
}

criterion_group!(benches, selection);
criterion_main!(benches);
