//! The wire contract, with no I/O: message types, validation and codecs.
//!
//! Everything a client, a publisher or NATS can send is decoded and validated
//! here (JSON for WebSocket; MessagePack in length-prefixed [`frame`]s for
//! WebTransport), so every entry point (WebSocket, HTTP, later gRPC and NATS) applies
//! the same rules and answers with the same stable error codes.
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod client;
mod close;
mod error;
pub mod frame;
mod ids;
mod server;
mod update;

pub use client::{
    AreaShape, CLIENT_TYPES, Command, Delivery, Rejection, Request, decode_json, decode_msgpack, decode_value,
    type_label,
};
pub use close::Close;
pub use error::ErrorCode;
pub use ids::{AreaId, Channel, IdError, Topic, UserId, VendorId};
pub use server::{AreaVendor, Codec, LeftReason, ServerMessage, encode};
pub use update::{Location, LocationUpdate, Update, ValidationError, VendorUpdate, now_rfc3339};
