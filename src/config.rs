//! Command line and environment configuration.
//!
//! Every flag can also come from a `LIVEROLL_*` environment variable, so a
//! systemd `EnvironmentFile=` can carry the whole configuration. Checks that
//! span several flags live in [`Config::validate`]; a failure there exits with
//! status 2 and one line naming the flag, like clap's own errors.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

use crate::serve::forwarded::Cidr;

/// Zero-downtime rolling updates for one process behind a reverse proxy.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "liveroll",
    version,
    about,
    max_term_width = 100,
    args_override_self = true,
    after_help = "To control a running liveroll (status, rollover, pause, ...): liveroll ctl --help"
)]
pub struct Config {
    /// Command that fetches the new artifact (run with `sh -c`).
    #[arg(long, env = "LIVEROLL_PULL", value_name = "CMD")]
    pub pull: String,

    /// Command that prints the artifact's ID or version on stdout.
    #[arg(long, env = "LIVEROLL_ID", value_name = "CMD")]
    pub id: String,

    /// Command that starts a child; `<<PORT>>` and `<<HEALTHCHECK>>` are expanded.
    #[arg(long, env = "LIVEROLL_EXEC", value_name = "CMD")]
    pub exec: String,

    /// Command that stops a child whose real process lives elsewhere (e.g.
    /// `docker rm -f app-<<PORT>>`); `<<PORT>>`, `<<ID>>` and `<<HEALTHCHECK>>`
    /// are expanded. Run before a child's process tree is signalled, for a
    /// slot whose port is still held, and for both slots at startup.
    #[arg(long, env = "LIVEROLL_STOP", value_name = "CMD")]
    pub stop: Option<String>,

    /// Where liveroll records the children it started, so that after a
    /// crash the next start stops what was left behind. Default:
    /// $RUNTIME_DIRECTORY (systemd), else /run/liveroll as root, else
    /// $XDG_RUNTIME_DIR/liveroll, else /tmp/liveroll-UID.
    #[arg(long, env = "LIVEROLL_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<std::path::PathBuf>,

    /// Time between update checks (units: ns, us, ms, s, m, h).
    #[arg(long, env = "LIVEROLL_INTERVAL", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,

    /// Path polled on a child until it answers HTTP 200.
    #[arg(long, env = "LIVEROLL_HEALTHCHECK", default_value = "/healthz", value_parser = parse_path, value_name = "PATH")]
    pub healthcheck: String,

    /// How long a new child may take to become healthy.
    #[arg(long, env = "LIVEROLL_HEALTH_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub health_timeout: Duration,

    /// How long a retired child may keep finishing its in-flight requests.
    #[arg(long, env = "LIVEROLL_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub drain_timeout: Duration,

    /// Time between SIGTERM and SIGKILL for a child's process group.
    #[arg(long, env = "LIVEROLL_KILL_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub kill_timeout: Duration,

    /// Limit for one run of `--pull` or `--id`; its process group is killed after it.
    #[arg(long, env = "LIVEROLL_COMMAND_TIMEOUT", default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub command_timeout: Duration,

    /// How long a request waits for a healthy child before it gets 503.
    #[arg(long, env = "LIVEROLL_HOLD_TIMEOUT", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub hold_timeout: Duration,

    /// Most requests waiting for a healthy child at once; more get 503 at once.
    #[arg(
        long,
        env = "LIVEROLL_MAX_HELD",
        default_value_t = 1024,
        value_name = "N"
    )]
    pub max_held: usize,

    /// Time between health checks of serving children (0s turns them off).
    #[arg(long, env = "LIVEROLL_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub health_interval: Duration,

    /// Consecutive failed checks that take a serving child out of the proxy.
    #[arg(long, env = "LIVEROLL_UNHEALTHY_THRESHOLD", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub unhealthy_threshold: u32,

    /// Consecutive passed checks that bring an ejected child back.
    #[arg(long, env = "LIVEROLL_HEALTHY_THRESHOLD", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..), value_name = "N")]
    pub healthy_threshold: u32,

    /// After a new child is published, keep the previous one warm (out of
    /// rotation) this long and roll back to it if the new one breaks a rule
    /// (0s: retire the previous child at once).
    #[arg(long, env = "LIVEROLL_BAKE", default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub bake: Duration,

    /// Roll back when more than this share (percent) of the new child's
    /// requests are 5xx or upstream errors, and more than the previous child's.
    #[arg(long, env = "LIVEROLL_ROLLBACK_ERROR_RATE", default_value = "5", value_parser = parse_percent, value_name = "PERCENT")]
    pub rollback_error_rate: f64,

    /// Requests a new child must have answered before the error and
    /// latency rules judge it.
    #[arg(
        long,
        env = "LIVEROLL_ROLLBACK_MIN_REQUESTS",
        default_value_t = 20,
        value_name = "N"
    )]
    pub rollback_min_requests: u64,

    /// Roll back when the new child's p99 time to the response header is
    /// more than this many times the previous child's (0 turns the rule off).
    #[arg(
        long,
        env = "LIVEROLL_ROLLBACK_LATENCY_FACTOR",
        default_value = "3",
        value_name = "FACTOR"
    )]
    pub rollback_latency_factor: f64,

    /// During the bake window, send only this share (percent) of clients to
    /// the new child (0: all of them).
    #[arg(long, env = "LIVEROLL_CANARY", default_value = "0", value_parser = parse_percent, value_name = "PERCENT")]
    pub canary: f64,

    /// How a client stays on its side of a canary: a cookie the proxy sets,
    /// or a hash of its address.
    #[arg(
        long,
        env = "LIVEROLL_CANARY_BY",
        value_enum,
        default_value = "cookie",
        value_name = "HOW"
    )]
    pub canary_by: crate::serve::canary::By,

    /// After a stop signal, keep serving this long with /ready at 503 so a
    /// load balancer in front stops sending first.
    #[arg(long, env = "LIVEROLL_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_delay: Duration,

    /// Port the reverse proxy listens on.
    #[arg(long, env = "LIVEROLL_PORT", default_value_t = 8080, value_parser = parse_port)]
    pub port: u16,

    /// Address the reverse proxy listens on.
    #[arg(
        long,
        env = "LIVEROLL_BIND",
        default_value = "0.0.0.0",
        value_name = "ADDR"
    )]
    pub bind: IpAddr,

    /// Port of the first child slot.
    #[arg(long = "child-port1", env = "LIVEROLL_CHILD_PORT1", default_value_t = 9101, value_parser = parse_port)]
    pub child_port1: u16,

    /// Port of the second child slot.
    #[arg(long = "child-port2", env = "LIVEROLL_CHILD_PORT2", default_value_t = 9102, value_parser = parse_port)]
    pub child_port2: u16,

    /// Serve /metrics, /status and /ready on this address (e.g. 127.0.0.1:9100),
    /// and the operator commands (POST /rollover, /pause, /resume, /rollback,
    /// /promote).
    #[arg(long, env = "LIVEROLL_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Serve only GET /ready on this address, for a load balancer's health
    /// check (e.g. 0.0.0.0:9099), while --admin-listen stays on loopback.
    #[arg(long, env = "LIVEROLL_READY_LISTEN", value_name = "ADDR")]
    pub ready_listen: Option<SocketAddr>,

    /// Bearer token every admin request but /ready must carry
    /// (`Authorization: Bearer TOKEN`). Without one, operator commands are
    /// taken from loopback clients only.
    #[arg(
        long,
        env = "LIVEROLL_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<Secret>,

    /// Read --admin-token from this file (its first line), so the token is
    /// not on the command line.
    #[arg(long, env = "LIVEROLL_ADMIN_TOKEN_FILE", value_name = "PATH")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// How /status shows the --pull, --id, --exec and --stop commands:
    /// `redacted` hides assigned values, URL passwords, tokens and
    /// Authorization headers; `hidden` leaves the commands out.
    #[arg(
        long,
        env = "LIVEROLL_STATUS_COMMANDS",
        value_enum,
        default_value = "redacted",
        value_name = "HOW"
    )]
    pub status_commands: StatusCommands,

    /// Log one line per proxied request (log target `access`).
    #[arg(long, env = "LIVEROLL_ACCESS_LOG")]
    pub access_log: bool,

    /// Time a client has to send a whole request header, from its first
    /// byte (then 408); also how long a new connection may stay silent.
    #[arg(long, env = "LIVEROLL_HEADER_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,

    /// How long an idle client connection is kept open between requests
    /// (0s: no keep-alive).
    #[arg(long, env = "LIVEROLL_KEEPALIVE_TIMEOUT", default_value = "75s", value_parser = parse_duration, value_name = "DURATION")]
    pub keepalive_timeout: Duration,

    /// Most client connections open at once; more wait in the listen
    /// backlog [default: from the file descriptor limit, see README].
    #[arg(long, env = "LIVEROLL_MAX_CONNECTIONS", value_parser = parse_positive, value_name = "N")]
    pub max_connections: Option<usize>,

    /// Largest request body accepted (bytes; k, m, g suffixes are 1024-based);
    /// larger ones get 413 [default: no limit].
    #[arg(long, env = "LIVEROLL_MAX_BODY_SIZE", value_parser = parse_size, value_name = "SIZE")]
    pub max_body_size: Option<u64>,

    /// Addresses or CIDR blocks of proxies in front (a load balancer) whose
    /// X-Forwarded-* and Forwarded headers are kept; anyone else's are replaced.
    #[arg(
        long,
        env = "LIVEROLL_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR,..."
    )]
    pub trusted_proxies: Vec<Cidr>,

    /// Pingora YAML file for worker tuning (threads, keep-alive pool, ...).
    #[arg(short = 'c', long, env = "LIVEROLL_CONF", value_name = "FILE")]
    pub conf: Option<String>,
}

/// How `/status` shows the commands (`--status-commands`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusCommands {
    Full,
    Redacted,
    Hidden,
}

/// A value that is never printed, not even by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    /// A token as an HTTP header carries it: printable ASCII, no spaces.
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("the token must not be empty".into());
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("the token must be printable ASCII without spaces".into());
        }
        Ok(Secret(s.to_string()))
    }
}

impl Config {
    /// Parses the command line and environment, exiting with status 2 on bad input.
    pub fn from_env() -> Self {
        let config = Self::parse();
        if let Err((kind, msg)) = config.validate() {
            Self::command().error(kind, msg).exit();
        }
        config
    }

    /// Checks that hold across flags; clap has already checked each one alone.
    fn validate(&self) -> Result<(), (ErrorKind, String)> {
        let conflict = |msg: String| Err((ErrorKind::ArgumentConflict, msg));
        if self.child_port1 == self.child_port2 {
            return conflict(format!(
                "--child-port1 and --child-port2 must differ (both are {})",
                self.child_port1
            ));
        }
        for (flag, port) in [
            ("--child-port1", self.child_port1),
            ("--child-port2", self.child_port2),
        ] {
            if port == self.port {
                return conflict(format!("{flag} must differ from --port (both are {port})"));
            }
        }
        for (flag, addr) in [
            ("--admin-listen", self.admin_listen),
            ("--ready-listen", self.ready_listen),
        ] {
            let Some(addr) = addr else { continue };
            if [self.port, self.child_port1, self.child_port2].contains(&addr.port()) {
                return conflict(format!(
                    "{flag} must not use the proxy's or a child's port ({})",
                    addr.port()
                ));
            }
        }
        if self.ready_listen.is_some() && self.ready_listen == self.admin_listen {
            return conflict(
                "--ready-listen must differ from --admin-listen (that one serves /ready too)"
                    .into(),
            );
        }
        if self.rollback_latency_factor < 0.0 || !self.rollback_latency_factor.is_finite() {
            return Err((
                ErrorKind::InvalidValue,
                "--rollback-latency-factor must be 0 or more".into(),
            ));
        }
        for (flag, value) in [
            ("--interval", self.interval),
            ("--health-timeout", self.health_timeout),
            ("--command-timeout", self.command_timeout),
            ("--header-timeout", self.header_timeout),
        ] {
            if value.is_zero() {
                return Err((
                    ErrorKind::InvalidValue,
                    format!("{flag} must be greater than zero"),
                ));
            }
        }
        for (flag, cmd) in [
            ("--pull", self.pull.as_str()),
            ("--id", self.id.as_str()),
            ("--exec", self.exec.as_str()),
            // Optional, but when given it must say something.
            ("--stop", self.stop.as_deref().unwrap_or("-")),
        ] {
            if cmd.trim().is_empty() {
                return Err((ErrorKind::InvalidValue, format!("{flag} must not be empty")));
            }
        }
        Ok(())
    }

    /// With `--admin-token-file`, reads the token into `admin_token`.
    pub fn read_token_file(&mut self) -> Result<(), String> {
        let Some(path) = &self.admin_token_file else {
            return Ok(());
        };
        let what = format!("--admin-token-file {}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| format!("{what}: {e}"))?;
        let line = text.lines().next().unwrap_or("").trim();
        self.admin_token = Some(line.parse().map_err(|e| format!("{what}: {e}"))?);
        Ok(())
    }

    /// The address the proxy listens on.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }

    /// The two child slots' ports, in slot order.
    pub fn child_ports(&self) -> [u16; 2] {
        [self.child_port1, self.child_port2]
    }

    /// How long one run of `--stop` may take before its process group is
    /// killed: twice `--kill-timeout`, so `docker stop --time` up to the
    /// kill timeout fits with room for Docker's own teardown.
    pub fn stop_timeout(&self) -> std::time::Duration {
        self.kill_timeout * 2
    }

    /// The state directory: `--state-dir`, else the first of
    /// `$RUNTIME_DIRECTORY` (set by systemd's `RuntimeDirectory=`),
    /// `/run/liveroll` for root, `$XDG_RUNTIME_DIR/liveroll`,
    /// `/tmp/liveroll-UID`.
    pub fn state_dir(&self) -> std::path::PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dirs) = var("RUNTIME_DIRECTORY") {
            let first = dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or("")
                .to_string();
            return first.into();
        }
        let uid = nix::unistd::Uid::current();
        if uid.is_root() {
            return "/run/liveroll".into();
        }
        match var("XDG_RUNTIME_DIR") {
            Some(dir) => std::path::PathBuf::from(dir).join("liveroll"),
            None => format!("/tmp/liveroll-{uid}").into(),
        }
    }
}

/// Durations as the seed takes them: a number and a unit (`500ms`, `10s`, `1m`, `1h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| format!("{e} (examples: 500ms, 10s, 5m)"))
}

/// A percentage, `5` or `5%`, from 0 to 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    let text = s.trim().trim_end_matches('%');
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("'{s}' is not a percentage from 0 to 100")),
    }
}

/// A byte count: `1048576`, `512k`, `10m`, `1g` (also `kb`, `KiB`, ...;
/// all 1024-based).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let bad = || format!("'{s}' is not a size (examples: 65536, 512k, 10m, 1g)");
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(bad()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(bad)
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a positive number")),
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) => Err("port must be between 1 and 65535, not 0".into()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("'{s}' is not a port number (1-65535)")),
    }
}

fn parse_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') {
        return Err(format!("'{s}' must start with '/'"));
    }
    if s.bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "'{s}' must not contain spaces or control characters"
        ));
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let mut args = vec![
            "liveroll", "--pull", "true", "--id", "echo 1", "--exec", "x",
        ];
        args.extend_from_slice(extra);
        let config = Config::try_parse_from(args).map_err(|e| e.to_string())?;
        config.validate().map_err(|(_, msg)| msg)?;
        Ok(config)
    }

    #[test]
    fn defaults_match_the_seed() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert_eq!(c.health_timeout, Duration::from_secs(60));
        assert_eq!(c.healthcheck, "/healthz");
        assert_eq!((c.port, c.child_port1, c.child_port2), (8080, 9101, 9102));
    }

    #[test]
    fn the_token_is_never_printed_and_can_come_from_a_file() {
        let c = parse(&["--admin-token", "s3cret-T0ken"]).unwrap();
        assert_eq!(c.admin_token.as_ref().unwrap().expose(), "s3cret-T0ken");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        assert_eq!(c.status_commands, StatusCommands::Redacted);

        let dir = std::env::temp_dir().join(format!("liveroll-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let mut c = parse(&["--admin-token-file", file.to_str().unwrap()]).unwrap();
        c.read_token_file().unwrap();
        assert_eq!(c.admin_token.unwrap().expose(), "from-file");
        std::fs::write(&file, "\n").unwrap();
        let mut c = parse(&["--admin-token-file", file.to_str().unwrap()]).unwrap();
        let err = c.read_token_file().unwrap_err();
        assert!(err.contains("must not be empty"), "{err}");
        let mut c = parse(&["--admin-token-file", "/nonexistent/token"]).unwrap();
        let err = c.read_token_file().unwrap_err();
        assert!(
            err.starts_with("--admin-token-file /nonexistent/token: "),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn durations_take_every_seed_unit() {
        for (text, want) in [
            ("1ns", Duration::from_nanos(1)),
            ("2us", Duration::from_micros(2)),
            ("3ms", Duration::from_millis(3)),
            ("4s", Duration::from_secs(4)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
        ] {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for bad in ["", "10", "ten seconds", "-1s", "5 parsecs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn trusted_proxies_take_a_list() {
        assert!(parse(&[]).unwrap().trusted_proxies.is_empty());
        let c = parse(&["--trusted-proxies", "10.0.0.0/8,::1"]).unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(parse(&["--trusted-proxies", "10.0.0.0/99"]).is_err());
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        for (text, want) in [
            ("0", 0),
            ("1024", 1024),
            ("1k", 1024),
            ("64KiB", 65536),
            ("10m", 10 << 20),
            ("1G", 1 << 30),
        ] {
            assert_eq!(parse_size(text), Ok(want), "{text}");
        }
        for bad in ["", "k", "1.5m", "10 parsecs", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&[]).unwrap().max_body_size, None);
        let c = parse(&["--max-body-size", "10m"]).unwrap();
        assert_eq!(c.max_body_size, Some(10 << 20));
    }

    #[test]
    fn connection_limits_parse() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.header_timeout, Duration::from_secs(60));
        assert_eq!(c.keepalive_timeout, Duration::from_secs(75));
        assert_eq!(c.max_connections, None);
        let c = parse(&["--max-connections", "100", "--keepalive-timeout", "0s"]).unwrap();
        assert_eq!(c.max_connections, Some(100));
        assert!(c.keepalive_timeout.is_zero());
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--header-timeout", "0s"]).is_err());
    }

    #[test]
    fn cross_flag_checks_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--child-port1", "9000", "--child-port2", "9000"],
                "--child-port1 and --child-port2 must differ",
            ),
            (&["--port", "9101"], "--child-port1 must differ from --port"),
            (&["--port", "9102"], "--child-port2 must differ from --port"),
            (
                &["--interval", "0s"],
                "--interval must be greater than zero",
            ),
            (&["--port", "0"], "not 0"),
            (&["--healthcheck", "healthz"], "must start with '/'"),
            (
                &["--admin-listen", "127.0.0.1:8080"],
                "--admin-listen must not use the proxy's or a child's port (8080)",
            ),
            (
                &["--ready-listen", "0.0.0.0:9101"],
                "--ready-listen must not use the proxy's or a child's port (9101)",
            ),
            (
                &[
                    "--admin-listen",
                    "127.0.0.1:9100",
                    "--ready-listen",
                    "127.0.0.1:9100",
                ],
                "--ready-listen must differ from --admin-listen",
            ),
            (&["--admin-token", ""], "the token must not be empty"),
            (&["--admin-token", "a b"], "without spaces"),
            (
                &["--admin-token", "t", "--admin-token-file", "/x"],
                "cannot be used with",
            ),
            (&["--status-commands", "some"], "possible values"),
        ];
        for (args, want) in cases {
            let err = parse(args).unwrap_err();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }
}
