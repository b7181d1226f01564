//! venta-gateway: delivers vendor location and vendor data updates from
//! backend publishers to every subscribed client, within milliseconds.
//!
//! Layout (data flows top to bottom; `docs/ARCHITECTURE.md` has the picture):
//! - [`protocol`]: message types, validation and codecs; its own crate
//!   (`crates/protocol`), pure, no I/O.
//! - [`hub`]: topics → subscribers, fan-out into bounded per-connection
//!   [`hub::Outbox`]es, conflation. No I/O.
//! - [`session`]: one client's state machine (limits, heartbeat, token
//!   expiry, dispatch), driven by every transport; it does no I/O and asks
//!   for its dependency calls ([`session::Call`]).
//! - [`admission`]: the one gate every connection passes (origin, connect
//!   rate, token, slots).
//! - [`transport`]: sockets in, frames out (`ws`: axum WebSocket, JSON;
//!   `wt`: WebTransport over HTTP/3, MessagePack frames and datagrams).
//! - [`listener`]: the clients' HTTP port (timeouts, bounds, drain).
//! - [`bus`]: how updates travel between publishers and instances
//!   (`nats`, `local`: in-process).
//! - [`ingest`]: publish entry points (`http`, `grpc`).
//! - [`geo`]: live area subscriptions ("vendors near me"): this instance's
//!   area index (geometry in `crates/geo`, pure) and its engines (`local`,
//!   `nats`: cell subjects and shared positions in JetStream KV).
//! - [`audit`]: the subscription audit trail (`postgres`, `sqlite`), fed
//!   through a bounded queue, a batching writer and a spill journal.
//! - [`http`]: health, readiness, metrics, status.
//! - [`auth`]: JWT on connect and refresh; [`ratelimit`]: GCRA budgets, in
//!   memory or shared through Redis.
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
pub mod dashboard;
pub mod geo;
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
