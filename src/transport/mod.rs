//! Transports: sockets in, frames out. No business rules live here; every
//! decision is the [`crate::session::Session`]'s.

pub mod ws;
pub mod wt;
