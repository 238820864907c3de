use std::process::exit;
use std::sync::{mpsc, Arc};
use std::thread;

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;

use liveroll::backends::BackendSet;
use liveroll::config::Config;
use liveroll::proxy::Proxy;
use liveroll::supervisor::Supervisor;
use liveroll::{child, signals};

fn main() {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,pingora_core=warn,pingora_proxy=warn"),
    )
    .init();
    let config = Arc::new(Config::from_env());

    // Pingora would retry a taken port for half a minute and then run on
    // without a listener; find out now and say so.
    if let Err(e) = std::net::TcpListener::bind(config.listen_addr()) {
        fail(&format!(
            "cannot listen on {} (--port): {e}",
            config.listen_addr()
        ));
    }
    let server_conf = server_conf(&config).unwrap_or_else(|e| fail(&e));

    let mut server = Server::new_with_opt_and_conf(None, server_conf);
    server.bootstrap();

    let backends = Arc::new(BackendSet::new());
    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Proxy::new(backends.clone()),
        "liveroll proxy",
    );
    proxy.add_tcp(&config.listen_addr().to_string());

    let (stop_tx, stop_watch) = signals::stop_channel();
    let (finished_tx, finished) = mpsc::channel();
    let supervisor = Supervisor::new(config.clone(), backends, stop_tx, finished_tx.clone());
    server.add_service(proxy);
    server.add_service(background_service("supervisor", supervisor));

    thread::spawn(move || {
        server.run(RunArgs {
            shutdown_signal: Box::new(stop_watch),
        });
        let _ = finished_tx.send(());
    });
    // Either the supervisor stopped every child, or Pingora gave up on it.
    let _ = finished.recv();
    child::kill_all_now();
    exit(0);
}

/// Pingora's settings: the `-c` file if given, with shutdown timing that fits
/// liveroll unless the file sets it.
fn server_conf(config: &Config) -> Result<ServerConf, String> {
    let mut conf = match &config.conf {
        Some(path) => {
            ServerConf::load_from_yaml(path).map_err(|e| format!("--conf {path}: {e}"))?
        }
        None => ServerConf::new().expect("the built-in configuration parses"),
    };
    if conf.daemon {
        return Err(
            "--conf: `daemon: true` is not supported; run liveroll in the foreground (systemd)"
                .into(),
        );
    }
    // Pingora waits this long after a stop signal before dropping its tasks;
    // liveroll exits as soon as its children are gone, so this is only a bound.
    let bound = config.drain_timeout + config.kill_timeout * 2;
    conf.grace_period_seconds.get_or_insert(bound.as_secs() + 5);
    conf.graceful_shutdown_timeout_seconds.get_or_insert(1);
    Ok(conf)
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    exit(1);
}
