//! Several hosts on one machine: a network namespace `lb` for the load
//! balancer and the load client, one namespace per host running a liveroll
//! with its demo child, and a veth pair from `lb` straight into each host.
//!
//! ```text
//!   lb: HAProxy :80, load client ── 10.231.N.1/30 ═veth═ 10.231.N.2/30 ── hN: liveroll :8080, ready :9099
//!                                                                          (admin on 127.0.0.1:9100)
//! ```
//!
//! Nothing is routed or forwarded through the machine's own (root) network
//! namespace, so its firewall (Docker's FORWARD policy DROP and NAT rules)
//! never sees this traffic, and the machine's interfaces and routes are never
//! touched. Each namespace has its own ports, so every host uses the same
//! fixed ports, as real hosts would.
//!
//! Code runs in a namespace in two ways:
//! - [`Netns::run`] runs a closure on a thread that has entered the namespace
//!   with `setns(2)`, which moves only the calling thread. Sockets, threads
//!   and processes it creates belong to the namespace, so the harness's own
//!   [`Liveroll::spawn`], [`Load`] and [`request`] work there unchanged;
//! - [`Netns::command`] wraps a program in `ip netns exec`, as an operator
//!   would run it.
//!
//! [`Fleet`] removes its namespaces when dropped, also when a test panics,
//! after killing whatever still runs inside them (an orphaned child of a
//! SIGKILLed liveroll, say). Namespaces left by a test process that no longer
//! exists (one killed outright) are removed by the next [`Fleet::create`].

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::{process_gone, request, wait_for, Liveroll, Load, Ports, Response, Scratch};

/// Every namespace this harness creates is named `PREFIX-PID-N-ROLE`.
const PREFIX: &str = "lrfleet";
/// The ports of every host, inside its own namespace.
pub const PROXY_PORT: u16 = 8080;
/// The admin listener, on the host's loopback only.
pub const ADMIN_PORT: u16 = 9100;
/// The readiness listener (`--ready-listen`) on the host's address, which
/// the load balancer checks.
pub const READY_PORT: u16 = 9099;
pub const CHILD_PORTS: (u16, u16) = (9101, 9102);

/// A test that cannot run here: under `CI=true` that is a failure, elsewhere
/// the test says so and passes.
pub fn skip_or_fail(why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("cannot run under CI=true: {why}");
    }
    eprintln!("skipped: {why}");
}

/// Runs a command to completion; its stderr (or stdout) on failure.
fn run_quiet(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(format!(
            "{cmd:?}: {}: {}{}",
            out.status,
            text(&out.stderr),
            text(&out.stdout)
        ))
    }
}

/// One network namespace, by name (`/run/netns/NAME`).
#[derive(Clone, Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Runs `f` on a new thread inside this namespace and returns its result
    /// (a panic in `f` is passed on).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let thread = s.spawn(|| {
                self.enter().unwrap();
                f()
            });
            thread
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Moves the calling thread into this namespace.
    fn enter(&self) -> Result<(), String> {
        let ns = File::open(format!("/run/netns/{}", self.name))
            .map_err(|e| format!("namespace {}: {e}", self.name))?;
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns into {} (needs CAP_SYS_ADMIN): {e}", self.name))
    }

    /// `ip netns exec NAME program`.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// `ip -n NAME args...`: configures this namespace's network.
    fn ip(&self, args: &[&str]) -> Result<String, String> {
        run_quiet(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// The processes whose network namespace this is.
    fn pids(&self) -> Vec<i32> {
        run_quiet(Command::new("ip").args(["netns", "pids", &self.name]))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// SIGKILLs everything inside (never this test process), then deletes
    /// the namespace; the veth ends inside go with it.
    fn remove(&self) {
        let me = std::process::id() as i32;
        for pid in self.pids().into_iter().filter(|&p| p != me) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Err(e) = run_quiet(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("could not remove namespace {}: {e}", self.name);
        }
    }
}

/// The namespaces of one test and the links between them; the guard that
/// removes them.
pub struct Fleet {
    pub lb: Netns,
    /// Each host's namespace and its address as `lb` reaches it.
    pub hosts: Vec<(Netns, Ipv4Addr)>,
    created: Vec<Netns>,
}

impl Fleet {
    /// `lb` and `hosts` host namespaces (`h1`, `h2`, ...), host N linked to
    /// `lb` by a veth pair on 10.231.N.0/30: `.1` in `lb`, `.2` in the host.
    /// `Err` says why namespaces cannot be created here (not root, no
    /// CAP_NET_ADMIN, no `ip`); what was created by then is removed.
    pub fn create(hosts: u8) -> Result<Fleet, String> {
        assert!((1..=63).contains(&hosts));
        remove_stale_namespaces();
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = format!(
            "{PREFIX}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut fleet = Fleet {
            lb: Netns {
                name: format!("{base}-lb"),
            },
            hosts: Vec::new(),
            created: Vec::new(),
        };
        let lb = fleet.lb.clone();
        fleet.add(&lb)?;
        // CAP_NET_ADMIN creates namespaces; entering one takes CAP_SYS_ADMIN.
        let probe = lb.clone();
        std::thread::spawn(move || probe.enter())
            .join()
            .expect("the setns probe")?;
        for n in 1..=hosts {
            let host = Netns {
                name: format!("{base}-h{n}"),
            };
            fleet.add(&host)?;
            // Both ends are created inside their namespaces: neither ever
            // appears in the root namespace. Interface names are per
            // namespace: `hN` in lb, `lb` in host N.
            let (lb_if, lb_addr) = (format!("h{n}"), format!("10.231.{n}.1/30"));
            let host_addr = format!("10.231.{n}.2/30");
            lb.ip(&[
                "link", "add", &lb_if, "type", "veth", "peer", "name", "lb", "netns", &host.name,
            ])?;
            lb.ip(&["addr", "add", &lb_addr, "dev", &lb_if])?;
            lb.ip(&["link", "set", &lb_if, "up"])?;
            host.ip(&["addr", "add", &host_addr, "dev", "lb"])?;
            host.ip(&["link", "set", "lb", "up"])?;
            fleet.hosts.push((host, Ipv4Addr::new(10, 231, n, 2)));
        }
        Ok(fleet)
    }

    fn add(&mut self, ns: &Netns) -> Result<(), String> {
        run_quiet(Command::new("ip").args(["netns", "add", &ns.name]))?;
        self.created.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(())
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for ns in &self.created {
            ns.remove();
        }
    }
}

/// Removes the namespaces of test processes that are gone (killed before
/// their guard could run).
fn remove_stale_namespaces() {
    let Ok(list) = run_quiet(Command::new("ip").args(["netns", "list"])) else {
        return;
    };
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let owner = name
            .strip_prefix(&format!("{PREFIX}-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok());
        if owner.is_some_and(process_gone) {
            Netns { name: name.into() }.remove();
        }
    }
}

/// One host: a liveroll (with the demo app) in its own namespace, on the
/// fixed ports, its readiness listener on the host's address so the load
/// balancer can check `/ready`, its admin listener on loopback.
pub struct Host {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    pub scratch: Scratch,
    extra: Vec<String>,
    liveroll: Option<Liveroll>,
}

impl Host {
    /// A host that runs liveroll with the harness's usual flags plus `extra`
    /// once [`Host::start`] is called.
    pub fn new(ns: &Netns, addr: Ipv4Addr, extra: &[&str]) -> Host {
        Host {
            ns: ns.clone(),
            addr,
            scratch: Scratch::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            liveroll: None,
        }
    }

    /// Starts liveroll inside the namespace and waits until `/ready` is 200.
    pub fn start(&mut self) {
        assert!(self.liveroll.is_none(), "liveroll already runs");
        let admin = format!("127.0.0.1:{ADMIN_PORT}");
        let ready = format!("{}:{READY_PORT}", self.addr);
        let mut args: Vec<String> = [
            "--bind",
            "0.0.0.0",
            "--port",
            &PROXY_PORT.to_string(),
            "--child-port1",
            &CHILD_PORTS.0.to_string(),
            "--child-port2",
            &CHILD_PORTS.1.to_string(),
            "--admin-listen",
            &admin,
            "--ready-listen",
            &ready,
            "--pull",
            "true",
            "--id",
            &self.scratch.id_cmd(),
            "--exec",
            &self.scratch.exec_cmd(),
            "--interval",
            "1h",
            "--health-timeout",
            "30s",
            "--kill-timeout",
            "5s",
            "--bake",
            "0s",
            // Each host has a disk of its own; here they share one.
            "--state-dir",
            &self.scratch.dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        let ports = Ports {
            proxy: PROXY_PORT,
            child1: CHILD_PORTS.0,
            child2: CHILD_PORTS.1,
        };
        // Spawned from a thread inside the namespace: liveroll, its children
        // and Liveroll::spawn's check that the proxy listens are all there.
        let liveroll = self
            .ns
            .run(|| Liveroll::spawn(&self.scratch, ports, &args, &[]));
        self.liveroll = Some(liveroll);
        wait_for(&format!("{} to be ready", self.ns.name), || {
            self.liveroll().assert_running();
            self.admin("/ready").filter(|r| r.status == 200).map(|_| ())
        });
    }

    pub fn liveroll(&self) -> &Liveroll {
        self.liveroll.as_ref().expect("liveroll is not running")
    }

    pub fn signal(&self, signal: Signal) {
        self.liveroll().signal(signal);
    }

    /// Waits for liveroll to exit (after a signal) and returns its status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut liveroll = self.liveroll.take().expect("liveroll is not running");
        liveroll.wait_exit()
    }

    /// A GET on the admin port, from inside the host.
    pub fn admin(&self, path: &str) -> Option<Response> {
        self.ns.run(|| request(ADMIN_PORT, "GET", path, b"").ok())
    }

    /// One sample of liveroll's `/metrics` (see [`super::metric`]).
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.ns.run(|| super::metric(ADMIN_PORT, name))
    }

    pub fn status(&self) -> Option<Value> {
        let r = self.admin("/status").filter(|r| r.status == 200)?;
        serde_json::from_str(&r.body).ok()
    }

    /// The pids of the children `/status` shows, with their states.
    pub fn children(status: &Value) -> Vec<(i64, String)> {
        status["children"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["pid"].as_i64().unwrap_or(0),
                    c["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// `liveroll ctl ARGS` run on the host against its admin listener, as
    /// an operator would over ssh.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        self.ns
            .command(super::LIVEROLL)
            .arg("ctl")
            .args(args)
            .args(["--admin", &format!("127.0.0.1:{ADMIN_PORT}")])
            .env_remove("LIVEROLL_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// A forced rollover as a script rolling a fleet does it: `liveroll ctl
    /// rollover --wait` on the host, which returns once that update is over.
    /// Checked at once, without polling: the update rolled, and exactly one
    /// child serves and it is not the one that served before (the old one
    /// has been drained and stopped). Returns the new child's pid.
    pub fn rollover(&self) -> i64 {
        let before = self.status().expect("/status answers");
        let old = match Self::children(&before)[..] {
            [(pid, ref state)] if state == "serving" => pid,
            ref other => panic!("expected one serving child, got {other:?}"),
        };
        let out = self.ctl(&["rollover", "--wait", "--timeout", "60s"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "ctl rollover --wait on {}: {}: {text}",
            self.ns.name,
            out.status
        );
        let status = self.status().expect("/status answers");
        let update = &status["last_update"];
        assert_eq!(
            (&update["trigger"], &update["result"]),
            (&Value::from("admin"), &Value::from("rolled")),
            "{status:#}"
        );
        match Self::children(&status)[..] {
            [(pid, ref state)] if state == "serving" && pid != old => pid,
            ref other => panic!("after ctl rollover --wait ({text}): {other:?}"),
        }
    }
}

/// A reference configuration (`conf/NAME`) as a test runs it: `reference`
/// with each `(from, to)` applied. Each `from` must occur exactly once, so
/// the reference cannot change under the test unseen.
pub fn from_reference(reference: &str, substitutions: &[(&str, String)]) -> String {
    let mut config = reference.to_string();
    for (from, to) in substitutions {
        let found = config.matches(from).count();
        assert_eq!(found, 1, "{from:?} occurs {found} times in the reference");
        config = config.replace(from, to);
    }
    config
}

/// HAProxy running in a namespace, in the foreground (`-db`), logging to a
/// file, with its runtime API on a Unix socket (reachable from the root
/// namespace: Unix sockets with a path are not network-namespaced).
pub struct Haproxy {
    process: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Haproxy {
    /// `haproxy -c -f FILE` must accept it.
    pub fn check(config: &Path) {
        if let Err(e) = run_quiet(Command::new("haproxy").arg("-c").arg("-f").arg(config)) {
            panic!("HAProxy refuses {}: {e}", config.display());
        }
    }

    /// Starts HAProxy inside `ns`; `socket` is the stats socket the config
    /// names. Waits until the runtime API answers.
    pub fn start(ns: &Netns, config: &Path, socket: PathBuf, log: PathBuf) -> Haproxy {
        let out = File::create(&log).unwrap();
        let process = ns
            .command("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut haproxy = Haproxy {
            process,
            socket,
            log,
        };
        wait_for("HAProxy's runtime API", || {
            if let Some(status) = haproxy.process.try_wait().unwrap() {
                panic!("HAProxy exited ({status}):\n{}", haproxy.log());
            }
            haproxy.api("show info").ok().map(|_| ())
        });
        haproxy
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One runtime API command's answer.
    pub fn api(&self, command: &str) -> std::io::Result<String> {
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.write_all(format!("{command}\n").as_bytes())?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }

    /// `show stat` as one map per row (frontends, backends and servers),
    /// keyed by the CSV header's column names.
    pub fn stats(&self) -> Vec<HashMap<String, String>> {
        let csv = self.api("show stat").expect("HAProxy's runtime API");
        let mut lines = csv.lines();
        let header = lines.next().unwrap_or_default();
        let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
        lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                columns
                    .iter()
                    .zip(l.split(','))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// The stats row of `server` (or `BACKEND`) in `backend`.
    pub fn row(&self, backend: &str, server: &str) -> HashMap<String, String> {
        self.stats()
            .into_iter()
            .find(|r| r["pxname"] == backend && r["svname"] == server)
            .unwrap_or_else(|| panic!("no {backend}/{server} in HAProxy's stats"))
    }

    /// A counter of that row (0 when empty).
    pub fn counter(&self, backend: &str, server: &str, column: &str) -> u64 {
        self.row(backend, server)[column].parse().unwrap_or(0)
    }

    /// Waits until HAProxy's health checks put `server` in state `want`
    /// (`UP`, `DOWN`; the transitions show as `UP 1/2` and `DOWN 1/2`).
    pub fn wait_state(&self, backend: &str, server: &str, want: &str) {
        wait_for(&format!("HAProxy to see {backend}/{server} {want}"), || {
            (self.row(backend, server)["status"] == want).then_some(())
        });
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        if std::thread::panicking() {
            // Its last lines: during a host's outage it logs every
            // redispatched request.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("---- HAProxy log (last 40 lines) ----\n{tail}");
        }
    }
}

/// Open-source nginx running in a namespace in the foreground, logging its
/// errors to a file.
pub struct Nginx {
    process: Child,
    log: PathBuf,
}

impl Nginx {
    /// `nginx -t -c FILE` must accept it (as root: nginx opens its pid file).
    pub fn check(config: &Path) {
        if let Err(e) = run_quiet(Command::new("nginx").arg("-t").arg("-c").arg(config)) {
            panic!("nginx refuses {}: {e}", config.display());
        }
    }

    /// Starts nginx inside `ns` and waits until it answers on `port`.
    pub fn start(ns: &Netns, config: &Path, port: u16, log: PathBuf) -> Nginx {
        let out = File::create(&log).unwrap();
        let process = ns
            .command("nginx")
            .arg("-c")
            .arg(config)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut nginx = Nginx { process, log };
        wait_for("nginx to listen", || {
            if let Some(status) = nginx.process.try_wait().unwrap() {
                panic!("nginx exited ({status}):\n{}", nginx.log());
            }
            ns.run(|| request(port, "GET", "/", b"").ok()).map(|_| ())
        });
        nginx
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits. (SIGKILL would
        // leave the workers behind.)
        let _ = kill(Pid::from_raw(self.process.id() as i32), Signal::SIGTERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.process.try_wait().ok().flatten().is_none()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
        if std::thread::panicking() {
            eprintln!("---- nginx log ----\n{}", self.log());
        }
    }
}

/// Load from inside a namespace: one [`Load`] per entry of `kinds` (each a
/// client thread, see [`Load::start`]), so that successes and failures are
/// counted by kind.
pub struct NsLoad {
    loads: Vec<(&'static str, Load)>,
}

impl NsLoad {
    /// The threads are started from inside `ns` (threads stay in the
    /// namespace of the thread that created them), against `port` on its
    /// loopback.
    pub fn start(ns: &Netns, port: u16, kinds: &[&'static str]) -> NsLoad {
        let loads = ns.run(|| {
            kinds
                .iter()
                .map(|&kind| (kind, Load::start(port, &[kind])))
                .collect()
        });
        NsLoad { loads }
    }

    /// Client threads: each has at most one request in flight.
    pub fn threads(&self) -> usize {
        self.loads.len()
    }

    /// Waits until every client thread has had `n` more successes.
    pub fn wait_progress(&self, n: usize) {
        for (_, load) in &self.loads {
            load.wait_progress(n);
        }
    }

    pub fn finish(self) -> Tally {
        let mut kinds: Vec<(&'static str, usize, Vec<String>)> = Vec::new();
        for (kind, load) in self.loads {
            let (ok, failures) = load.finish();
            match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
                Some((_, n, f)) => {
                    *n += ok;
                    f.extend(failures);
                }
                None => kinds.push((kind, ok, failures)),
            }
        }
        Tally { kinds }
    }
}

/// What a load saw: per kind, the successes and the failures.
pub struct Tally {
    pub kinds: Vec<(&'static str, usize, Vec<String>)>,
}

impl Tally {
    pub fn failures(&self) -> Vec<&str> {
        self.kinds
            .iter()
            .flat_map(|(_, _, f)| f.iter().map(String::as_str))
            .collect()
    }

    pub fn requests(&self) -> usize {
        self.kinds.iter().map(|(_, ok, f)| ok + f.len()).sum()
    }
}

impl std::fmt::Display for Tally {
    /// `N requests, F failed (keep-alive GET ok/failed, ...)`.
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} failed (",
            self.requests(),
            self.failures().len()
        )?;
        for (i, (kind, ok, failed)) in self.kinds.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{kind} {}/{}", ok + failed.len(), failed.len())?;
        }
        write!(f, ")")
    }
}
