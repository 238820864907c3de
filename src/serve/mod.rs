//! The request path: the Pingora proxy and the set of children it may send
//! requests to. Nothing here takes a lock or formats a log line per request;
//! it knows children only as addresses the engine publishes.

pub mod admission;
pub mod backends;
pub mod canary;
pub mod connection;
pub mod connections;
pub mod forwarded;
pub mod head;
pub mod latch;
pub mod proxy;
pub mod stats;
pub mod stream;
pub mod strict;
