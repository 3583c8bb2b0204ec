//! # crema-server
//!
//! The `crema` binary's parts: a Redis-protocol (RESP2/RESP3) front door to a crema node, its
//! admin HTTP server and its configuration.
//!
//! ```text
//!  redis client ──RESP──▶ server::connection ──▶ cmd::run ──▶ cmd/<family>.rs
//!                         (limits, pipelining)    (table,        │ reads: read_barrier + local cache
//!                                                  auth, ACL,    │ writes: DistributedCache::execute
//!                                                  arity)
//!  operator ──HTTP──▶ admin (/metrics, /health, /ready, /cluster, membership)
//! ```
//!
//! Pure parts (RESP parsing in [`resp`], the command table) take bytes and return
//! values; only [`server`] and [`admin`] touch sockets.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod certs;
pub mod cmd;
pub mod config;
pub mod info;
pub mod metrics;
pub mod node;
pub mod resp;
pub mod server;

/// The Redis version crema reports (`HELLO`, `INFO`): the command set it follows.
pub const REDIS_COMPAT_VERSION: &str = "7.2.0";
