use std::process::exit;
use std::sync::{mpsc, Arc};
use std::thread;

use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use liveroll::config::Config;
use liveroll::process::{ephemeral, limits};
use liveroll::report::admin::Listeners;
use liveroll::report::event::Event;
use liveroll::serve::admission::{Admission, Slots};
use liveroll::serve::backends::BackendSet;
use liveroll::serve::connection::{Edge, Timeouts};
use liveroll::serve::forwarded::Trusted;
use liveroll::serve::proxy::{Proxy, Settings};
use liveroll::update::state::StateFile;
use liveroll::update::supervisor::Supervisor;
use liveroll::{server_conf, signals};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // `liveroll ctl ...` talks to a running liveroll; it has flags of its own.
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        exit(liveroll::ctl::main(std::env::args_os().skip(1)));
    }
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora_core=warn,pingora_proxy=warn"),
    )
    // Rollovers take milliseconds: seconds would hide what came first.
    .format_timestamp_millis()
    .init();
    let mut config = Config::from_env();
    config.read_token_file().unwrap_or_else(|e| fail(&e));
    // Before anything opens a descriptor of its own.
    let nofile = limits::raise_nofile();
    let listeners = check_listeners(&config);
    let state = StateFile::open(&config.state_dir(), config.child_ports())
        .unwrap_or_else(|e| fail(&format!("--state-dir: {e}")));
    let server_conf = server_conf::load(&config).unwrap_or_else(|e| fail(&e));
    let upstream_pool = server_conf.upstream_keepalive_pool_size;
    let max_connections = *config
        .max_connections
        .get_or_insert_with(|| limits::default_max_connections(nofile.soft, upstream_pool));
    report_limits(&config, nofile, max_connections, upstream_pool);
    let config = Arc::new(config);

    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();
    let backends = Arc::new(BackendSet::new());
    let proxy = proxy_service(&server, &config, backends.clone());
    let (stop_tx, stop_watch) = signals::stop_channel();
    let (finished_tx, finished) = mpsc::channel();
    let supervisor = Supervisor::new(
        config,
        backends,
        state,
        listeners,
        stop_tx,
        finished_tx.clone(),
    );
    let children = supervisor.children();
    server.add_service(proxy);
    server.add_service(background_service("supervisor", supervisor));

    thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(stop_watch),
        });
        let _ = finished_tx.send(());
    });
    // Either the supervisor stopped every child, or Pingora gave up on it:
    // then whatever the record still holds is killed now (what a `--stop`
    // command would have stopped is left to the next start).
    let _ = finished.recv();
    for child in children.borrow().iter() {
        child.tree.kill_now();
    }
    exit(0);
}

/// Pingora would retry a taken port for half a minute and then run on
/// without a listener: find out now and say so. Returns the admin and
/// readiness listeners.
fn check_listeners(config: &Config) -> Listeners {
    if let Err(e) = std::net::TcpListener::bind(config.listen_addr()) {
        fail(&format!(
            "cannot listen on {} (--port): {e}",
            config.listen_addr()
        ));
    }
    let bind = |addr: Option<std::net::SocketAddr>, flag: &str| {
        addr.map(|addr| {
            let listener = std::net::TcpListener::bind(addr)
                .unwrap_or_else(|e| fail(&format!("cannot listen on {addr} ({flag}): {e}")));
            listener
                .set_nonblocking(true)
                .unwrap_or_else(|e| fail(&e.to_string()));
            listener
        })
    };
    Listeners {
        admin: bind(config.admin_listen, "--admin-listen"),
        ready: bind(config.ready_listen, "--ready-listen"),
    }
}

/// Logs the descriptor limit in effect, and warns about a
/// `--max-connections` past it and child ports among the ephemeral ports.
fn report_limits(config: &Config, nofile: limits::NoFile, max_connections: usize, pool: usize) {
    Event::Limits {
        nofile: nofile.soft,
        inherited_nofile: nofile.inherited,
        max_connections,
    }
    .log();
    let safe = limits::default_max_connections(nofile.soft, pool);
    if max_connections > safe {
        Event::MaxConnectionsUnsafe {
            max_connections,
            safe,
            nofile: nofile.soft,
        }
        .log();
    }
    for (key, port) in [
        ("child-port1", config.child_port1),
        ("child-port2", config.child_port2),
    ] {
        if let Some(range) = ephemeral::range_holding(port) {
            Event::EphemeralPort { key, port, range }.log();
        }
    }
}

fn proxy_service(
    server: &Server,
    config: &Config,
    backends: Arc<BackendSet>,
) -> impl pingora_core::services::ServiceWithDependents {
    let settings = Settings {
        hold_timeout: config.hold_timeout,
        max_held: config.max_held,
        access_log: config.access_log,
        canary_by: config.canary_by,
        max_body_size: config.max_body_size,
        trusted: Trusted::new(config.trusted_proxies.clone()),
        keepalive: !config.keepalive_timeout.is_zero(),
    };
    let proxy = pingora_proxy::http_proxy(&server.configuration, Proxy::new(backends, settings));
    // Pingora's HTTP proxy, run per connection by liveroll's own loop (see
    // `serve::connection`): pipelining, header and keep-alive timeouts,
    // 414/431, and at most --max-connections at once.
    let slots = Slots::new(config.max_connections.unwrap_or(usize::MAX));
    let timeouts = Timeouts {
        header: config.header_timeout,
        keepalive: config.keepalive_timeout,
    };
    let edge = Edge::new(proxy, timeouts, slots.clone());
    let mut service = Service::new("liveroll proxy".to_string(), edge);
    service.set_connection_filter(Arc::new(Admission(slots)));
    // Pingora reads client connections through a 64 KiB buffer of its own,
    // made for TLS records; for plain HTTP it only doubles the copying and
    // costs 64 KiB per idle keep-alive client. The HTTP layer buffers anyway.
    service.add_listener(
        ListenerConfig::tcp(config.listen_addr().to_string())
            .l4_buffer(L4BufferSettings::default().read(0)),
    );
    service
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}
