//! liveroll: a zero-downtime rolling-update supervisor and reverse proxy for
//! one host, on Pingora. `main.rs` wires these parts together:
//!
//! - [`serve`]: the request path (the proxy and the set of children it may use);
//! - [`update`]: the engine that pulls, starts, checks, publishes and retires;
//! - [`process`]: the processes liveroll starts and the probes it sends them;
//! - [`report`]: what operators see (log lines, metrics, `/status`, systemd);
//! - [`ctl`]: `liveroll ctl`, the client of a running liveroll's admin listener.

pub mod allocator;
pub mod config;
pub mod ctl;
pub mod handover;
pub mod process;
pub mod report;
pub mod serve;
pub mod server_conf;
pub mod signals;
pub mod update;
