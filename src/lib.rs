//! venta-gateway: delivers vendor location and vendor data updates from
//! backend publishers to every subscribed client, within milliseconds.
//!
//! Layout (data flows top to bottom; see `DESIGN.md` §2):
//! - [`protocol`]: message types, validation and codecs. Pure, no I/O.
//! - [`hub`]: topics → subscribers, fan-out into bounded per-connection
//!   [`hub::Outbox`]es, conflation. Pure, no I/O.
//! - [`session`]: one client's state machine (limits, heartbeat, dispatch),
//!   driven by every transport.
//! - [`transport`]: sockets in, frames out (`ws`: axum WebSocket, JSON;
//!   `wt`: WebTransport over HTTP/3, MessagePack frames and datagrams).
//! - [`bus`]: how updates travel between publishers and instances
//!   (`local`: in-process).
//! - [`ingest`]: publish entry points (`http`, `grpc`).
//! - [`audit`]: the subscription audit trail (`postgres`, `sqlite`), fed
//!   through a bounded queue, a batching writer and a spill journal.
//! - [`http`]: health, readiness, metrics, status.
//! - [`auth`]: JWT on connect; [`ratelimit`]: GCRA budgets, in memory or
//!   shared through Redis.
//! - [`config`], [`metrics`], [`server`] (wiring).
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

/// The wire contract, in its own crate (`crates/protocol`): pure, no I/O.
pub use venta_protocol as protocol;

pub mod admission;
pub mod audit;
pub mod auth;
pub mod bus;
pub mod config;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod listener;
pub mod metrics;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod state;
pub mod transport;

pub use config::Config;
pub use server::Gateway;
