//! Live area subscriptions ("vendors near me"), the pure part: no I/O, no
//! async runtime, no clock (time comes in as `now_ms`).
//!
//! A client subscribes to a [`Shape`] (a box or a circle) and is told which
//! vendors are inside it, then who enters, moves inside and leaves. Across
//! gateway instances the map is cut into fixed grid [`Cell`]s, one NATS
//! subject each, so an instance only receives the location updates of the
//! cells its clients' areas cover. [`AreaIndex`] is the per-instance state that
//! turns those updates into per-area events and says which cells to
//! (un)subscribe and which to read from shared state.
//!
//! Module map:
//! * [`geometry`]: [`Point`], [`distance_m`], [`Shape`] with validation and the
//!   exact `contains` test.
//! * [`cell`]: the grid, [`Cell::of`], the NATS-safe [`Cell::token`].
//! * [`index`]: [`AreaIndex`] and the values its methods return.
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod cell;
pub mod geometry;
pub mod index;

pub use cell::{CELL_DEG, Cell, LAT_CELLS, LONG_CELLS};
pub use geometry::{EARTH_RADIUS_M, MAX_CELLS_PER_AREA, Point, Shape, ShapeError, distance_m};
pub use index::{AreaEvent, AreaIndex, AreaState, Completion, LeftReason, Position, Upsert};
