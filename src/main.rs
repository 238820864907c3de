use std::process::exit;
use std::sync::{mpsc, Arc};
use std::thread;

use std::os::fd::AsRawFd;

use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::Opt;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use liveroll::config::Config;
use liveroll::handover::{self, env_file, successor::Successor};
use liveroll::process::{ephemeral, limits};
use liveroll::report::admin::Listeners;
use liveroll::report::event::Event;
use liveroll::serve::admission::{Admission, Slots};
use liveroll::serve::backends::BackendSet;
use liveroll::serve::connection::{Edge, Timeouts};
use liveroll::serve::connections::{Connections, Tracked};
use liveroll::serve::forwarded::Trusted;
use liveroll::serve::proxy::{Proxy, Settings};
use liveroll::signals::Stop;
use liveroll::update::state::StateFile;
use liveroll::update::supervisor::{Supervisor, Wiring};
use liveroll::update::upgrade::Handover;
use liveroll::{server_conf, signals};

#[global_allocator]
static GLOBAL: liveroll::allocator::MiMalloc = liveroll::allocator::MiMalloc;

fn main() {
    // `liveroll ctl ...` talks to a running liveroll; it has flags of its own.
    if std::env::args_os().nth(1).is_some_and(|a| a == "ctl") {
        exit(liveroll::ctl::main(std::env::args_os().skip(1)));
    }
    // Before the logger (RUST_LOG may be in it) and before any thread.
    let env_file_keys = env_file::load().unwrap_or_else(|e| fail(&e));
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(
        // transfer_fd: on an upgrade Pingora looks for the socket once a
        // second and logs each miss as an error; liveroll reports the outcome.
        "info,pingora_core=warn,pingora_core::server::transfer_fd=off,pingora_proxy=warn",
    ))
    // Rollovers take milliseconds: seconds would hide what came first.
    .format_timestamp_millis()
    .init();
    // Started by an upgrade: a failure from here on is told to the old
    // process too, which keeps serving.
    let successor = match Successor::from_env() {
        None => None,
        Some(Ok(successor)) => Some(successor),
        Some(Err(e)) => fail(&e),
    };
    let refuse = |e: String| -> ! {
        if let Some(successor) = &successor {
            successor.refuse(&e);
        }
        fail(&e)
    };
    let mut config = Config::from_env();
    config.read_token_file().unwrap_or_else(|e| refuse(e));
    // Before anything opens a descriptor of its own.
    let nofile = limits::raise_nofile();
    let mut server_conf = server_conf::load(&config).unwrap_or_else(|e| refuse(e));
    let upstream_pool = server_conf.upstream_keepalive_pool_size;
    let max_connections = *config
        .max_connections
        .get_or_insert_with(|| limits::default_max_connections(nofile.soft, upstream_pool));
    report_limits(&config, nofile, max_connections, upstream_pool);
    let config = Arc::new(config);
    let (listeners, state) = match &successor {
        Some(successor) => {
            successor.check(&config).unwrap_or_else(|e| refuse(e));
            let listeners = successor.listeners(&config).unwrap_or_else(|e| refuse(e));
            let state = successor.state().unwrap_or_else(|e| refuse(e));
            (listeners, state)
        }
        None => {
            let listeners = check_listeners(&config);
            let state = StateFile::open(&config.state_dir(), config.child_ports())
                .unwrap_or_else(|e| fail(&format!("--state-dir: {e}")));
            (listeners, state)
        }
    };
    // Pingora's upgrade socket is liveroll's own, next to the state file.
    server_conf.upgrade_sock = handover::upgrade_sock(&config.state_dir(), config.child_ports())
        .to_string_lossy()
        .into_owned();
    // On an upgrade, Pingora receives the proxy's listening socket from the
    // old process here (it waits for it), instead of binding it.
    let opt = successor.as_ref().map(|_| Opt {
        upgrade: true,
        ..Opt::default()
    });
    let upgrading = opt.is_some();
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let (stop_tx, stop_watch) = signals::stop_channel();
    let stop_tx = Arc::new(stop_tx);
    let stop = stop_watch.receiver();
    let backends = Arc::new(BackendSet::new());
    let connections = Arc::new(Connections::default());
    let proxy = proxy_service(
        &server,
        &config,
        backends.clone(),
        connections.clone(),
        stop.clone(),
    );
    let (finished_tx, finished) = mpsc::channel();
    let handover = Handover {
        binary: std::env::current_exe()
            .unwrap_or_else(|e| fail(&format!("cannot find this binary: {e}"))),
        args: std::env::args_os().skip(1).collect(),
        env_file_keys,
        listen: config.listen_addr(),
        admin: listeners
            .admin
            .as_ref()
            .map(|l| (l.local_addr().expect("bound"), l.as_raw_fd())),
        ready: listeners
            .ready
            .as_ref()
            .map(|l| (l.local_addr().expect("bound"), l.as_raw_fd())),
        child_ports: config.child_ports(),
        state_dir: config.state_dir(),
        stop: stop_tx.clone(),
    };
    let supervisor = Supervisor::new(
        config,
        Wiring {
            backends,
            state,
            listeners,
            stop: stop_tx,
            finished: finished_tx.clone(),
            handover,
            successor,
            connections,
        },
    );
    let children = supervisor.children();
    let supervisor = server.add_service(background_service("supervisor", supervisor));
    let proxy = server.add_service(proxy);
    if upgrading {
        // Nothing is accepted before the children are adopted: until then
        // the old process accepts alone.
        proxy.add_dependency(&supervisor);
    }

    thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(stop_watch),
        });
        let _ = finished_tx.send(());
    });
    let _ = finished.recv();
    if *stop.borrow() == Stop::HandedOver {
        // The children are the new process's now.
        exit(0);
    }
    // Either the supervisor stopped every child, or Pingora gave up on it:
    // then whatever the record still holds is killed now (what a `--stop`
    // command would have stopped is left to the next start).
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
    connections: Arc<Connections>,
    stop: tokio::sync::watch::Receiver<Stop>,
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
    // 414/431, and at most --max-connections at once; counted, so that a
    // liveroll that handed over knows when its last client is done.
    let slots = Slots::new(config.max_connections.unwrap_or(usize::MAX));
    let timeouts = Timeouts {
        header: config.header_timeout,
        keepalive: config.keepalive_timeout,
    };
    let edge = Edge::new(proxy, timeouts, slots.clone());
    let mut service = Service::new(
        "liveroll proxy".to_string(),
        Tracked::new(edge, connections.clone(), stop),
    );
    service.set_connection_filter(Arc::new(Admission { slots, connections }));
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
