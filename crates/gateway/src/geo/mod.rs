//! Live area subscriptions ("vendors near me"): the gateway's side.
//!
//! The geometry and the per-instance index are pure and live in the
//! `venta-geo` crate; this module owns the index of this instance
//! ([`Areas`]), turns its answers into frames in the clients' outboxes, and
//! talks to a [`GeoEngine`] for what crosses instances: subscribing the
//! grid cells the areas cover, and reading the positions already known in
//! a cell (the shared state a fresh instance's snapshot comes from).
//!
//! Two engines, as for the bus: [`local::LocalGeo`] (in process: every
//! location publish is indexed here) and [`nats::NatsGeo`] (a queue group of
//! the gateways indexes `venta.location.*` into JetStream KV and republishes
//! each update on its cell's subject, and on its previous cell's when it
//! changed cell, so watchers there see it leave).
//!
//! Ordering: an area's `subscribed` ack and its snapshot (or, for a moved
//! area, its difference) are pushed under the same lock that live events
//! take, after the area's cells are subscribed and read: nothing of that
//! area reaches the client before its snapshot, and nothing published after
//! the ack is missed.

pub mod local;
pub mod nats;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
pub use venta_geo::{AreaEvent, AreaIndex, Cell, Completion, Point, Shape, ShapeError};

use crate::bus::{BusError, DependencyStatus};
use crate::hub::{ConnId, Frame, Outbox, Route};
use crate::metrics::Metrics;
use crate::protocol::{
    AreaId, AreaShape, AreaVendor, Codec, LeftReason, Location, LocationUpdate, ServerMessage, VendorId, encode,
};

/// An area of one connection.
pub type AreaKey = (ConnId, AreaId);

/// A position as shared state holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPosition {
    /// Who.
    pub vendor: VendorId,
    /// Where.
    pub point: Point,
    /// The publisher's timestamp, Unix nanoseconds: newer wins.
    pub ts: i64,
    /// When it was written (Unix milliseconds), for the time to live.
    pub seen_ms: u64,
}

/// What crosses instances; one trait per pluggable engine.
pub trait GeoEngine: Send + Sync + 'static {
    /// Starts receiving the positions of these cells (none was watched on
    /// this instance before); resolves once updates published from now on
    /// will arrive. Called under the areas' lock: whatever records the
    /// cells as watched must happen in the call, the waiting in the future.
    fn watch(self: Arc<Self>, cells: Vec<Cell>) -> BoxFuture<'static, Result<(), BusError>>;

    /// Stops receiving these cells (no area of this instance covers them).
    /// Called under the areas' lock: must not block.
    fn unwatch(&self, cells: Vec<Cell>);

    /// The positions shared state holds in these cells.
    fn load(self: Arc<Self>, cells: Vec<Cell>) -> BoxFuture<'static, Result<Vec<StoredPosition>, BusError>>;

    /// Health for `/health` (`geo`).
    fn health(&self) -> DependencyStatus {
        DependencyStatus::Disabled
    }
}

/// The area limits (`GEO_*`).
#[derive(Debug, Clone, Copy)]
pub struct GeoLimits {
    /// Areas per connection.
    pub max_areas: usize,
    /// Largest box diagonal or circle diameter, km.
    pub max_area_km: f64,
    /// Vendors per snapshot (and members per area).
    pub snapshot_max: usize,
    /// Silence after which a vendor leaves every area.
    pub vendor_ttl: Duration,
}

impl GeoLimits {
    /// The limits of a configuration.
    pub fn from_config(config: &crate::config::GeoConfig) -> Self {
        Self {
            max_areas: config.max_areas,
            max_area_km: config.max_area_km,
            snapshot_max: config.snapshot_max,
            vendor_ttl: Duration::from_secs(config.vendor_ttl_secs),
        }
    }
}

/// Why an area subscription failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AreaError {
    /// The shape breaks a rule (`invalid_field` / `area_too_large`).
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The engine could not subscribe or read the area's cells; the area
    /// is dropped (`unavailable`).
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The client's shape as geometry.
pub fn shape_of(shape: &AreaShape) -> Shape {
    match *shape {
        AreaShape::BBox { south, west, north, east } => Shape::BBox { south, west, north, east },
        AreaShape::Circle { lat, long, radius_m } => Shape::Circle { center: Point::new(lat, long), radius_m },
    }
}

/// The shape as one line of the audit trail.
pub fn describe(shape: &AreaShape) -> String {
    match *shape {
        AreaShape::BBox { south, west, north, east } => format!("bbox {south},{west},{north},{east}"),
        AreaShape::Circle { lat, long, radius_m } => format!("circle {lat},{long} r={radius_m}m"),
    }
}

/// The ordering key of a publisher's RFC 3339 timestamp: Unix nanoseconds.
pub fn ts_of(timestamp: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(timestamp, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

/// A position's time as clients get it: RFC 3339 in UTC.
pub fn timestamp_of(ts: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ts))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The position a location update carries, if it has a usable timestamp.
pub fn position_of(update: &LocationUpdate) -> Option<(Point, i64)> {
    let ts = ts_of(&update.timestamp)?;
    Some((Point::new(update.location.lat, update.location.long), ts))
}

/// Wall-clock milliseconds: positions cross instances with their write
/// time, so every instance judges their age on the same clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

struct Conn {
    outbox: Arc<Outbox>,
    areas: HashSet<AreaId>,
    /// Areas whose moves go as datagrams.
    datagram: HashSet<AreaId>,
}

struct State {
    index: AreaIndex<AreaKey, VendorId>,
    conns: HashMap<ConnId, Conn>,
}

/// This instance's areas.
pub struct Areas {
    state: Mutex<State>,
    engine: OnceLock<Arc<dyn GeoEngine>>,
    limits: GeoLimits,
    metrics: Arc<Metrics>,
}

/// What a successful `subscribe_area` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribed {
    /// A new area: its snapshot was sent.
    New,
    /// An existing area moved: the difference was sent.
    Moved,
}

impl Areas {
    /// No areas yet; [`Areas::set_engine`] before the first subscribe.
    pub fn new(limits: GeoLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        let ttl_ms = u64::try_from(limits.vendor_ttl.as_millis()).unwrap_or(u64::MAX);
        Arc::new(Self {
            state: Mutex::new(State { index: AreaIndex::new(ttl_ms), conns: HashMap::new() }),
            engine: OnceLock::new(),
            limits,
            metrics,
        })
    }

    /// The engine behind cell subscriptions and shared state; set once,
    /// right after construction (the engine holds a weak handle back).
    pub fn set_engine(&self, engine: Arc<dyn GeoEngine>) {
        let _ = self.engine.set(engine);
    }

    /// The limits.
    pub fn limits(&self) -> GeoLimits {
        self.limits
    }

    fn engine(&self) -> Result<&Arc<dyn GeoEngine>, BusError> {
        self.engine.get().ok_or_else(|| {
            BusError::Unavailable(
                "area subscriptions are off on this gateway (GEO_ENABLED=false, or NATS without JetStream)".into(),
            )
        })
    }

    /// The engine's health.
    pub fn health(&self) -> DependencyStatus {
        self.engine.get().map_or(DependencyStatus::Disabled, |e| e.health())
    }

    /// `(areas, watched cells, vendors held)`: what a leak would grow.
    pub fn stats(&self) -> (usize, usize, usize) {
        let st = self.state.lock();
        (st.index.area_count(), st.index.watched_cell_count(), st.index.vendor_count())
    }

    /// Subscribes (or moves) an area and, once its cells are live and read,
    /// pushes `subscribed` and the snapshot (or the difference) into the
    /// connection's outbox. On failure the area is gone.
    #[allow(clippy::too_many_arguments)]
    pub async fn subscribe(
        self: Arc<Self>,
        conn: ConnId,
        outbox: Arc<Outbox>,
        area: AreaId,
        shape: Shape,
        datagram: bool,
        id: Option<String>,
    ) -> Result<Subscribed, AreaError> {
        let engine = Arc::clone(self.engine()?);
        let key = (conn, area.clone());
        // Cell (un)subscriptions are started under the lock, in the order the
        // index decided them: a cell one area leaves while another starts
        // watching it is never left unsubscribed.
        let (up, watching) = {
            let mut st = self.state.lock();
            let up = st.index.upsert(key.clone(), shape)?;
            let c = st.conns.entry(conn).or_insert_with(|| Conn {
                outbox: Arc::clone(&outbox),
                areas: HashSet::new(),
                datagram: HashSet::new(),
            });
            c.areas.insert(area.clone());
            if datagram {
                c.datagram.insert(area.clone());
            } else {
                c.datagram.remove(&area);
            }
            if !up.unwatch.is_empty() {
                engine.unwatch(up.unwatch.clone());
            }
            let watching = (!up.watch.is_empty()).then(|| Arc::clone(&engine).watch(up.watch.clone()));
            (up, watching)
        };
        let prepared = async {
            if let Some(watching) = watching {
                watching.await?;
            }
            if up.load.is_empty() { Ok(Vec::new()) } else { Arc::clone(&engine).load(up.load.clone()).await }
        };
        let loaded = match prepared.await {
            Ok(positions) => positions,
            Err(e) => {
                self.remove(conn, &area);
                return Err(e.into());
            }
        };
        let mut st = self.state.lock();
        let now = now_ms();
        let State { index, conns } = &mut *st;
        let events = index.load(&up.load, loaded.into_iter().map(|p| (p.vendor, p.point, p.ts, p.seen_ms)), now);
        self.dispatch(conns, events, None);
        let Some(c) = conns.get(&conn) else {
            // The connection ended while its cells were read.
            return Err(BusError::Unavailable("connection closed".into()).into());
        };
        let codec = c.outbox.codec();
        let ack = ServerMessage::AreaSubscribed { area: &area, id: id.as_deref() };
        c.outbox.push(Frame::control(encode(&ack, codec), ack.type_name()));
        let outcome = if up.new_area { Subscribed::New } else { Subscribed::Moved };
        match index.complete(&key, self.limits.snapshot_max) {
            Some(Completion::Snapshot { vendors, truncated }) => {
                let vendors: Vec<AreaVendor> =
                    vendors.into_iter().map(|(vendor, point, ts)| area_vendor(vendor, point, ts)).collect();
                let msg = ServerMessage::AreaSnapshot { area: &area, vendors: &vendors, truncated };
                c.outbox.push(Frame::control(encode(&msg, codec), msg.type_name()));
            }
            Some(Completion::Diff { events, .. }) => {
                let events = events.into_iter().map(|e| (key.clone(), e)).collect();
                self.dispatch(conns, events, None);
            }
            // Same shape again, or another read still outstanding (the
            // index completes it then): nothing more to say.
            None => {}
        }
        drop(st);
        self.gauges();
        Ok(outcome)
    }

    /// Drops an area; returns whether it existed.
    pub fn unsubscribe(&self, conn: ConnId, area: &AreaId) -> bool {
        let existed = self.remove(conn, area);
        self.gauges();
        existed
    }

    /// Drops every area of a connection (it ended).
    pub fn release(&self, conn: ConnId) {
        {
            let mut st = self.state.lock();
            let Some(c) = st.conns.remove(&conn) else { return };
            let mut cells = Vec::new();
            for area in c.areas {
                cells.extend(st.index.remove(&(conn, area)));
            }
            if let (false, Some(engine)) = (cells.is_empty(), self.engine.get()) {
                engine.unwatch(cells);
            }
        }
        self.gauges();
    }

    fn remove(&self, conn: ConnId, area: &AreaId) -> bool {
        let mut st = self.state.lock();
        let existed = match st.conns.get_mut(&conn) {
            Some(c) => {
                c.datagram.remove(area);
                let existed = c.areas.remove(area);
                if c.areas.is_empty() {
                    st.conns.remove(&conn);
                }
                existed
            }
            None => false,
        };
        let cells = st.index.remove(&(conn, area.clone()));
        if let (false, Some(engine)) = (cells.is_empty(), self.engine.get()) {
            engine.unwatch(cells);
        }
        existed
    }

    /// A live position from the engine (a cell subject, or a local publish).
    pub fn apply(&self, vendor: VendorId, point: Point, ts: i64, received: Instant) {
        let mut st = self.state.lock();
        let State { index, conns } = &mut *st;
        let events = index.apply(vendor, point, ts, now_ms());
        if !events.is_empty() {
            self.dispatch(conns, events, Some(received));
        }
    }

    /// Vendors silent for the time to live leave their areas.
    pub fn expire(&self) {
        let mut st = self.state.lock();
        let State { index, conns } = &mut *st;
        let events = index.expire(now_ms());
        if !events.is_empty() {
            self.dispatch(conns, events, None);
        }
    }

    /// Expires vendors until `stop`; one tracked task per instance.
    pub async fn run_expiry(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        // A tenth of the time to live, within [100 ms, 1 s]: `expired`
        // comes at most that late.
        let every = (self.limits.vendor_ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.expire(),
            }
        }
    }

    /// Encodes and queues events, each for its area's connection.
    fn dispatch(
        &self,
        conns: &HashMap<ConnId, Conn>,
        events: Vec<(AreaKey, AreaEvent<VendorId>)>,
        received: Option<Instant>,
    ) {
        // The events of one update share its position's time: formatted
        // once, not per area. Counters are bumped once per batch (a labelled
        // counter costs a lookup per call).
        let mut stamp: Option<(i64, String)> = None;
        let mut timestamp = |ts: i64| match &stamp {
            Some((t, s)) if *t == ts => s.clone(),
            _ => {
                let s = timestamp_of(ts);
                stamp = Some((ts, s.clone()));
                s
            }
        };
        // Apps name their one viewport alike ("map"), so the same event goes
        // byte for byte to many connections: encoded once per batch for each
        // (event, area id, codec), not once per connection.
        let mut encoded: HashMap<EventKey<'_>, (Bytes, &'static str)> = HashMap::new();
        let mut counts = [0u64; 3];
        for ((conn, area), event) in &events {
            let Some(c) = conns.get(conn) else { continue };
            let codec = c.outbox.codec();
            let key = EventKey::of(event, area, codec);
            let (bytes, ty) = match encoded.get(&key) {
                Some((bytes, ty)) => (bytes.clone(), *ty),
                None => {
                    let (bytes, ty) = encode_event(event, area, codec, &mut timestamp);
                    encoded.insert(key, (bytes.clone(), ty));
                    (bytes, ty)
                }
            };
            let kind = match event {
                AreaEvent::Entered { .. } => 0,
                AreaEvent::Moved { .. } => 1,
                AreaEvent::Left { .. } => 2,
            };
            let datagram = kind == 1 && c.datagram.contains(area);
            let route = if datagram { Route::AreaDatagram } else { Route::Control };
            let frame = Frame { bytes, ty, route, published_at: received };
            if matches!(c.outbox.push(frame), crate::hub::Push::Overflow) {
                self.metrics.slow_consumers_closed.inc();
            }
            counts[kind] += 1;
        }
        for (ty, n) in ["vendor_entered", "location_updated", "vendor_left"].into_iter().zip(counts) {
            if n > 0 {
                self.metrics.area_events.with_label_values(&[ty]).inc_by(n);
            }
        }
    }

    fn gauges(&self) {
        let (areas, cells, vendors) = self.stats();
        self.metrics.areas.set(i64::try_from(areas).unwrap_or(i64::MAX));
        self.metrics.area_cells.set(i64::try_from(cells).unwrap_or(i64::MAX));
        self.metrics.area_vendors.set(i64::try_from(vendors).unwrap_or(i64::MAX));
    }
}

/// What makes two area events the same bytes on the wire.
#[derive(PartialEq, Eq, Hash)]
struct EventKey<'a> {
    /// 0 entered, 1 moved, 2.. left (plus the reason).
    kind: u8,
    codec: Codec,
    area: &'a AreaId,
    vendor: &'a VendorId,
    /// Position and time as bits (0 for a left event, which has neither).
    lat: u64,
    long: u64,
    ts: i64,
}

impl<'a> EventKey<'a> {
    fn of(event: &'a AreaEvent<VendorId>, area: &'a AreaId, codec: Codec) -> Self {
        let (kind, vendor, lat, long, ts) = match event {
            AreaEvent::Entered { vendor, point, ts } => (0, vendor, point.lat.to_bits(), point.long.to_bits(), *ts),
            AreaEvent::Moved { vendor, point, ts } => (1, vendor, point.lat.to_bits(), point.long.to_bits(), *ts),
            AreaEvent::Left { vendor, reason } => {
                let reason = match reason {
                    venta_geo::LeftReason::Moved => 0,
                    venta_geo::LeftReason::Expired => 1,
                    venta_geo::LeftReason::AreaChanged => 2,
                };
                (2 + reason, vendor, 0, 0, 0)
            }
        };
        Self { kind, codec, area, vendor, lat, long, ts }
    }
}

/// The wire bytes and type name of one area event.
fn encode_event(
    event: &AreaEvent<VendorId>,
    area: &AreaId,
    codec: Codec,
    timestamp: &mut impl FnMut(i64) -> String,
) -> (Bytes, &'static str) {
    match event {
        AreaEvent::Entered { vendor, point, ts } => {
            let v = AreaVendor { vendor_id: vendor.clone(), location: location(*point), timestamp: timestamp(*ts) };
            let msg = ServerMessage::VendorEntered { area, vendor: &v };
            (encode(&msg, codec), msg.type_name())
        }
        AreaEvent::Moved { vendor, point, ts } => {
            let v = AreaVendor { vendor_id: vendor.clone(), location: location(*point), timestamp: timestamp(*ts) };
            let msg = ServerMessage::AreaMoved { area, vendor: &v };
            (encode(&msg, codec), msg.type_name())
        }
        AreaEvent::Left { vendor, reason } => {
            let msg = ServerMessage::VendorLeft { area, vendor, reason: left_reason(*reason) };
            (encode(&msg, codec), msg.type_name())
        }
    }
}

fn area_vendor(vendor: VendorId, point: Point, ts: i64) -> AreaVendor {
    AreaVendor { vendor_id: vendor, location: location(point), timestamp: timestamp_of(ts) }
}

fn location(point: Point) -> Location {
    Location { lat: point.lat, long: point.long }
}

fn left_reason(reason: venta_geo::LeftReason) -> LeftReason {
    match reason {
        venta_geo::LeftReason::Moved => LeftReason::Moved,
        venta_geo::LeftReason::Expired => LeftReason::Expired,
        venta_geo::LeftReason::AreaChanged => LeftReason::AreaChanged,
    }
}
