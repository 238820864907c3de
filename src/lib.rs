//! liveroll: a zero-downtime rolling-update supervisor and reverse proxy for
//! one host, on Pingora. `main.rs` wires these modules together.

pub mod admin;
pub mod backends;
pub mod child;
pub mod commands;
pub mod config;
pub mod health;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod proxy;
pub mod rollout;
pub mod server_conf;
pub mod signals;
pub mod status;
pub mod supervisor;
pub mod trigger;
