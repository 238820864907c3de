//! The floor under liveroll's proxy: a plain Pingora round-robin proxy with
//! Pingora's default settings and allocator, and nothing else (no hold, no
//! retries, no forwarding headers, no logging hook). `benches/compare.sh`
//! runs it beside nginx and liveroll, so the table shows how much of
//! liveroll's cost per request is Pingora's own.
//!
//! Not a criterion bench: `cargo bench` runs it with `--bench` and it returns
//! at once. compare.sh builds it with `cargo bench --no-run` and starts it as
//! `pingora_floor serve CONF LISTEN BACKEND...`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use pingora_core::prelude::{HttpPeer, Opt, Server};
use pingora_core::Result;
use pingora_proxy::{http_proxy_service, ProxyHttp, Session};

struct RoundRobin {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
}

#[async_trait]
impl ProxyHttp for RoundRobin {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        Ok(Box::new(HttpPeer::new(
            self.backends[i],
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("serve") {
        return; // `cargo bench` passes `--bench`: nothing to measure here.
    }
    let [_, conf, listen, backends @ ..] = &args[..] else {
        usage();
    };
    if backends.is_empty() {
        usage();
    }
    let backends = backends
        .iter()
        .map(|b| b.parse().expect("BACKEND is ip:port"))
        .collect();
    let opt = Opt {
        conf: Some(conf.clone()),
        ..Opt::default()
    };
    let mut server = Server::new(Some(opt)).expect("the Pingora conf loads");
    server.bootstrap();
    let proxy = RoundRobin {
        backends,
        next: AtomicUsize::new(0),
    };
    let mut service = http_proxy_service(&server.configuration, proxy);
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}

fn usage() -> ! {
    eprintln!("usage: pingora_floor serve CONF LISTEN BACKEND...");
    std::process::exit(2);
}
