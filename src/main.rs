use std::process::exit;
use std::sync::{mpsc, Arc};
use std::thread;

use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;

use liveroll::config::Config;
use liveroll::report::admin::Listeners;
use liveroll::serve::backends::BackendSet;
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
    let config = Arc::new(config);
    let listeners = check_listeners(&config);
    let state = StateFile::open(&config.state_dir(), config.child_ports())
        .unwrap_or_else(|e| fail(&format!("--state-dir: {e}")));
    let server_conf = server_conf::load(&config).unwrap_or_else(|e| fail(&e));

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
    };
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Proxy::new(backends, settings),
        "liveroll proxy",
    );
    // Pingora reads client connections through a 64 KiB buffer of its own,
    // made for TLS records; for plain HTTP it only doubles the copying and
    // costs 64 KiB per idle keep-alive client. The HTTP layer buffers anyway.
    proxy.add_listener(
        ListenerConfig::tcp(config.listen_addr().to_string())
            .l4_buffer(L4BufferSettings::default().read(0)),
    );
    proxy
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}
