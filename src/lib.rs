//! liveroll: a zero-downtime rolling-update supervisor and reverse proxy for
//! one host, on Pingora. `main.rs` wires these modules together.

pub mod backends;
pub mod child;
pub mod commands;
pub mod config;
pub mod health;
pub mod proxy;
pub mod rollout;
pub mod signals;
pub mod supervisor;
pub mod trigger;
