//! The geo engine across instances, on the bus's NATS connection.
//!
//! - **Indexing, once per update, by one instance:** every gateway joins the
//!   queue group `<prefix>.geo-indexer` on `<prefix>.location.*`, so each
//!   location update (from HTTP, gRPC or a backend publishing straight onto
//!   the subject) is indexed by exactly one of them. The indexer keeps each
//!   vendor's position in JetStream KV (`v.<vendor>`, written with the
//!   revision it read: compare-and-set, so two instances indexing two
//!   updates of one vendor serialise), drops updates older than the stored
//!   one, and republishes the update on `<prefix>.geo.<cell>`, and on its
//!   previous cell's subject when it changed cell: watchers there see it
//!   leave, whichever instance handled the update before. It republishes
//!   twice: right after the compare-and-set (low latency), and again once
//!   the cell mirror below holds it (so an area that started watching in
//!   between misses nothing); see [`NatsGeo::index`].
//! - **Watching:** an instance subscribes `<prefix>.geo.<cell>` only for the
//!   cells its clients' areas cover. An instance whose clients watch Madrid
//!   hears nothing of Tokyo (beyond its share of the indexing).
//! - **Snapshots:** `c.<cell>.<vendor>` keys mirror the positions per cell;
//!   a new area's cells are read with one ordered consumer (last value per
//!   key), so a fresh instance knows who is inside.
//!
//! The same update can reach a watcher twice (its area covers both the old
//! and the new cell), and two indexers' republishes of one vendor can cross:
//! the index takes a position only if it is newer than the one it holds.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{Areas, Cell, GeoEngine, Point, StoredPosition, now_ms, position_of};
use crate::bus::nats::NatsBus;
use crate::bus::{BusError, DependencyStatus};
use crate::metrics::Metrics;
use crate::protocol::{Channel, LocationUpdate, Update, VendorId};

/// How long one KV operation or read may take.
const ROUND_TRIP: Duration = Duration::from_secs(5);
/// Vendors indexed at once by one instance (each update is a few KV round
/// trips); a vendor's updates go through one lane, in order.
const INDEX_LANES: usize = 64;
/// Distinct vendors waiting per lane (the newest update of each): 131,072
/// vendors behind in all, a few tens of MB at most.
const LANE_MAX_PENDING: usize = 2048;

/// One indexing lane: the newest pending update per vendor, oldest vendor
/// first.
#[derive(Default)]
struct Lane {
    pending: Mutex<indexmap::IndexMap<String, async_nats::Message>>,
    wake: tokio::sync::Notify,
}
/// Vendors whose last write one lane remembers (64 lanes: 131,072 in all,
/// ~100 bytes each).
const KNOWN_PER_LANE: usize = 2048;

/// The revision and position a lane last wrote per vendor: its next update
/// goes straight to the compare-and-set, without reading the KV first. A
/// stale entry (another instance wrote the vendor since) only costs the
/// failed compare-and-set and a read, as a miss does.
///
/// Across instances the queue group hands a vendor's next update to this
/// lane only one time in N, so memory mostly fails there and a read first
/// is cheaper: [`Known::trust`] follows how often memory held, and below
/// even odds the lane reads first, trying memory again now and then.
#[derive(Default)]
struct Known {
    written: indexmap::IndexMap<VendorId, (u64, Stored)>,
    /// Compare-and-sets from memory that held minus those that failed,
    /// within ±[`TRUST_SPAN`]: negative means "read first".
    trust: i8,
    /// Updates since memory was last tried while distrusted.
    untried: u8,
}

/// How far [`Known::trust`] swings: it tracks the recent odds (memory
/// saves a round trip when it holds and costs one when it fails, so even
/// odds are the break-even), and one lucky hit does not swing it back.
const TRUST_SPAN: i8 = 8;
/// While distrusted, memory is still tried once in this many updates (to
/// notice the other instances have gone).
const PROBE_EVERY: u8 = 16;

impl Known {
    /// Whether this update should go from memory.
    fn trusted(&mut self) -> bool {
        if self.trust >= 0 {
            return true;
        }
        self.untried += 1;
        if self.untried >= PROBE_EVERY {
            self.untried = 0;
            return true;
        }
        false
    }

    /// A compare-and-set from memory held (or not).
    fn held(&mut self, held: bool) {
        self.trust = if held { (self.trust + 1).min(TRUST_SPAN) } else { (self.trust - 1).max(-TRUST_SPAN) };
    }

    /// What was written, unless the KV has let it expire since.
    fn get(&self, vendor: &VendorId, ttl: Duration, now_ms: u64) -> Option<(u64, Stored)> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.written.get(vendor).copied().filter(|(_, s)| now_ms.saturating_sub(s.seen) < ttl_ms)
    }

    fn put(&mut self, vendor: &VendorId, revision: u64, stored: Stored) {
        if self.written.len() >= KNOWN_PER_LANE && !self.written.contains_key(vendor) {
            // Full: forget one (bounded, O(1)).
            self.written.swap_remove_index(0);
        }
        self.written.insert(vendor.clone(), (revision, stored));
    }

    fn forget(&mut self, vendor: &VendorId) {
        self.written.swap_remove(vendor);
    }
}

/// Compare-and-set attempts for one update before it is given up (and
/// counted): only a vendor updated from many instances at once retries.
const CAS_ATTEMPTS: usize = 16;
/// Cells per snapshot consumer (its filter subjects).
const CELLS_PER_READ: usize = 64;

/// Settings of the NATS geo engine.
#[derive(Debug, Clone)]
pub struct NatsGeoOptions {
    /// Positions older than this are gone from shared state (`GEO_VENDOR_TTL`).
    pub ttl: Duration,
    /// KV replicas (a NATS cluster keeps positions through a node's loss).
    pub replicas: usize,
}

/// Why an update was not indexed.
#[derive(Debug)]
enum IndexError {
    /// Other instances kept winning the compare-and-set (not an outage).
    Contended,
    /// The KV or NATS failed.
    Bus(BusError),
}

impl From<BusError> for IndexError {
    fn from(e: BusError) -> Self {
        Self::Bus(e)
    }
}

/// The lane of a vendor (FNV-1a: stable, no allocation).
fn lane_of(vendor: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in vendor.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % INDEX_LANES as u64).unwrap_or(0)
}

/// A position as the KV holds it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Stored {
    lat: f64,
    long: f64,
    /// Publisher timestamp, Unix nanoseconds.
    ts: i64,
    /// Written at, Unix milliseconds.
    seen: u64,
}

impl Stored {
    fn point(&self) -> Point {
        Point::new(self.lat, self.long)
    }
}

/// The engine.
pub struct NatsGeo {
    bus: Arc<NatsBus>,
    metrics: Arc<Metrics>,
    areas: Weak<Areas>,
    opts: NatsGeoOptions,
    bucket: String,
    kv: tokio::sync::Mutex<Option<kv::Store>>,
    /// One reader per watched cell.
    cells: Mutex<HashMap<Cell, CancellationToken>>,
    status: Mutex<DependencyStatus>,
}

impl std::fmt::Debug for NatsGeo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsGeo").field("bucket", &self.bucket).finish_non_exhaustive()
    }
}

/// KV bucket names may not contain `.`; one bucket per prefix.
fn bucket_name(prefix: &str) -> String {
    crate::bus::nats::jetstream_name(prefix, "GEO")
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(format!("area state ({what}): {e}"))
}

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BusError> {
    match tokio::time::timeout(ROUND_TRIP, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, e)),
        Err(_) => Err(unavailable(what, "timed out")),
    }
}

impl NatsGeo {
    /// Joins the indexing queue group and serves `areas`.
    pub fn start(bus: Arc<NatsBus>, areas: &Arc<Areas>, metrics: Arc<Metrics>, opts: NatsGeoOptions) -> Arc<Self> {
        let geo = Arc::new(Self {
            metrics,
            bucket: bucket_name(bus.prefix()),
            bus: Arc::clone(&bus),
            areas: Arc::downgrade(areas),
            opts,
            kv: tokio::sync::Mutex::new(None),
            cells: Mutex::new(HashMap::new()),
            status: Mutex::new(DependencyStatus::Down("starting".into())),
        });
        let weak = Arc::downgrade(&geo);
        bus.spawn(move |stop| run_indexer(weak, stop));
        geo
    }

    fn geo_subject(&self, cell: Cell) -> String {
        format!("{}.geo.{}", self.bus.prefix(), cell.token())
    }

    /// The KV bucket, set up on first use and again after a failure.
    async fn store(&self) -> Result<kv::Store, BusError> {
        let mut held = self.kv.lock().await;
        if let Some(store) = held.as_ref() {
            return Ok(store.clone());
        }
        let js = jetstream::new(self.bus.client());
        let config = kv::Config {
            bucket: self.bucket.clone(),
            description: "venta-gateway: vendor positions for area subscriptions".into(),
            history: 1,
            max_age: self.opts.ttl,
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.opts.replicas.max(1),
            ..Default::default()
        };
        let result = match timed("bucket", js.create_or_update_key_value(config)).await {
            Ok(store) => Ok(store),
            // Older servers without create-or-update: take the bucket as it is.
            Err(e) => timed("bucket", js.get_key_value(self.bucket.clone())).await.map_err(|_| e),
        };
        match result {
            Ok(store) => {
                *self.status.lock() = DependencyStatus::Ok;
                *held = Some(store.clone());
                Ok(store)
            }
            Err(e) => {
                *self.status.lock() = DependencyStatus::Down(e.to_string());
                Err(e)
            }
        }
    }

    /// Forgets the bucket handle after an error, so the next use sets it up
    /// again (a NATS that came back without its state).
    async fn failed(&self, e: &BusError) {
        *self.status.lock() = DependencyStatus::Down(e.to_string());
        self.kv.lock().await.take();
    }

    /// Indexes one location update: compare-and-set the vendor's position,
    /// mirror it into its cell, republish on the new (and old) cell.
    ///
    /// One JetStream round trip stands between an update and its cell
    /// subjects when `known` holds the vendor (the compare-and-set); the
    /// read is needed only on a miss or a lost compare-and-set. Each round
    /// trip waited for here is latency of every area delivery (s4: four of
    /// them, read, compare-and-set, mirror and ghost check, made p50 ≈ 5 ms).
    async fn index(&self, update: &LocationUpdate, known: &mut Known) -> Result<(), IndexError> {
        let Some((point, ts)) = position_of(update) else { return Ok(()) };
        let kv = self.store().await?;
        let vendor = &update.vendor_id;
        let vkey = format!("v.{vendor}");
        let cell = Cell::of(point);
        let stored = Stored { lat: point.lat, long: point.long, ts, seen: now_ms() };
        let value = Bytes::from(serde_json::to_vec(&stored).unwrap_or_default());
        let mut cached = if known.trusted() { known.get(vendor, self.opts.ttl, stored.seen) } else { None };
        let mut attempt = 0;
        let (previous, revision) = loop {
            attempt += 1;
            // What this lane last wrote for the vendor, or what the KV holds.
            let from_memory = cached.is_some();
            let (prev, last) = match cached.take() {
                Some((revision, prev)) => (Some(prev), Some(revision)),
                None => {
                    let entry = timed("read", kv.entry(vkey.clone())).await?;
                    let prev = entry
                        .as_ref()
                        .filter(|e| e.operation == kv::Operation::Put)
                        .and_then(|e| serde_json::from_slice::<Stored>(&e.value).ok());
                    (prev, entry.map(|e| e.revision))
                }
            };
            if prev.is_some_and(|p| p.ts >= ts) {
                // Older than what is known (GPS fixes arrive out of order).
                // The KV only ever moves to newer positions, so a cached one
                // this new means the KV's is at least as new.
                return Ok(());
            }
            let written = match last {
                Some(revision) => tokio::time::timeout(ROUND_TRIP, kv.update(vkey.clone(), value.clone(), revision))
                    .await
                    .map(|r| r.map_err(|e| e.to_string())),
                None => tokio::time::timeout(ROUND_TRIP, kv.create(vkey.clone(), value.clone()))
                    .await
                    .map(|r| r.map_err(|e| e.to_string())),
            };
            if from_memory {
                known.held(matches!(written, Ok(Ok(_))));
            }
            match written {
                Ok(Ok(rev)) => break (prev.map(|p| Cell::of(p.point())), rev),
                // Another instance wrote this vendor since (or the cached
                // revision expired): read the KV's and try again.
                Ok(Err(_)) if attempt < CAS_ATTEMPTS => known.forget(vendor),
                Ok(Err(_)) => {
                    known.forget(vendor);
                    return Err(IndexError::Contended);
                }
                Err(_) => {
                    known.forget(vendor);
                    return Err(unavailable("write", "timed out").into());
                }
            }
        };
        known.put(vendor, revision, stored);
        let ckey = format!("c.{}.{vendor}", cell.token());
        let old = previous.filter(|c| *c != cell);
        let payload = Bytes::from(Update::Location(update.clone()).to_publish_json());
        let client = self.bus.client();
        let publish = || async {
            timed("publish", client.publish(self.geo_subject(cell), payload.clone())).await?;
            if let Some(old) = old {
                timed("publish", client.publish(self.geo_subject(old), payload.clone())).await?;
            }
            Ok::<(), BusError>(())
        };
        // Published as soon as the position is the vendor's: every area
        // watching the cells now hears it one round trip after it came in.
        publish().await?;
        // An area that starts watching a cell after that publish reads the
        // mirror instead, which may not hold this yet: the mirror is written
        // (and the old cell's entry deleted), then the update is published
        // once more, so such an area either finds it in the mirror or hears
        // the second publish. Watchers that heard the first take the second
        // as the same position (not newer) and do nothing.
        let mirror = timed("cell write", kv.put(ckey.clone(), value));
        let unmirror = async {
            match old {
                Some(old) => timed("cell delete", kv.delete(format!("c.{}.{vendor}", old.token()))).await.map(|_| ()),
                None => Ok(()),
            }
        };
        futures_util::future::try_join(mirror, unmirror).await?;
        publish().await?;
        // A later update of this vendor may have won its compare-and-set
        // (on another instance) while this one wrote its cell key, and
        // deleted that key before this write: then this cell key is a ghost
        // unless removed here.
        if let Some(now) = timed("reread", kv.entry(vkey)).await?
            && now.revision != revision
            && serde_json::from_slice::<Stored>(&now.value).is_ok_and(|p| Cell::of(p.point()) != cell)
        {
            known.forget(vendor);
            timed("cell repair", kv.delete(ckey)).await?;
        }
        Ok(())
    }

    /// Reads the `c.<cell>.*` keys of some cells (last value per key).
    async fn read_cells(&self, kv: &kv::Store, cells: &[Cell]) -> Result<Vec<StoredPosition>, BusError> {
        let filters: Vec<String> = cells.iter().map(|c| format!("$KV.{}.c.{}.*", self.bucket, c.token())).collect();
        let consumer = timed(
            "snapshot",
            kv.stream.create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.bus.client().new_inbox(),
                filter_subjects: filters,
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            }),
        )
        .await?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = timed("snapshot", consumer.messages()).await?;
        loop {
            let Ok(next) = tokio::time::timeout(ROUND_TRIP, messages.next()).await else {
                return Err(unavailable("snapshot", "timed out"));
            };
            let Some(msg) = next else { break };
            let msg = msg.map_err(|e| unavailable("snapshot", e))?;
            let pending = msg.info().map(|i| i.pending).unwrap_or(0);
            let deleted = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
            let vendor = msg.subject.as_str().rsplit('.').next().and_then(|v| VendorId::parse(v).ok());
            if let (false, Some(vendor), Ok(p)) = (deleted, vendor, serde_json::from_slice::<Stored>(&msg.payload)) {
                out.push(StoredPosition { vendor, point: p.point(), ts: p.ts, seen_ms: p.seen });
            }
            if pending == 0 {
                break;
            }
        }
        Ok(out)
    }

    async fn index_message(&self, msg: &async_nats::Message, known: &mut Known) {
        let vendor = msg.subject.as_str().rsplit('.').next().unwrap_or_default();
        let Ok(Update::Location(update)) = Update::from_publish_json(Channel::Location, &msg.payload, Some(vendor))
        else {
            return;
        };
        match self.index(&update, known).await {
            Ok(()) => {}
            Err(IndexError::Contended) => {
                self.metrics.area_index_errors.inc();
                tracing::warn!(vendor = %update.vendor_id, "geo indexer: gave up on an update after {CAS_ATTEMPTS} conflicting writes");
            }
            Err(IndexError::Bus(e)) => {
                self.metrics.area_index_errors.inc();
                tracing::debug!(vendor = %update.vendor_id, error = %e, "geo indexer: update not indexed");
                self.failed(&e).await;
            }
        }
    }

    fn on_cell_message(&self, payload: &[u8]) {
        let Ok(Update::Location(update)) = Update::from_publish_json(Channel::Location, payload, None) else {
            return;
        };
        let (Some((point, ts)), Some(areas)) = (position_of(&update), self.areas.upgrade()) else { return };
        areas.apply(update.vendor_id, point, ts, Instant::now());
    }
}

impl GeoEngine for NatsGeo {
    fn watch(self: Arc<Self>, cells: Vec<Cell>) -> BoxFuture<'static, Result<(), BusError>> {
        let bus = Arc::clone(&self.bus);
        let subjects: Vec<(Cell, String)> = cells.iter().map(|c| (*c, self.geo_subject(*c))).collect();
        let geo = Arc::downgrade(&self);
        let tokens: Vec<CancellationToken> = {
            let mut held = self.cells.lock();
            cells
                .iter()
                .map(|c| {
                    let token = CancellationToken::new();
                    if let Some(old) = held.insert(*c, token.clone()) {
                        old.cancel();
                    }
                    token
                })
                .collect()
        };
        Box::pin(async move {
            if !bus.is_connected() {
                bus.sync().await?;
            }
            let client = bus.client();
            for ((_, subject), token) in subjects.into_iter().zip(tokens) {
                let sub = timed("subscribe", client.subscribe(subject)).await?;
                let geo = Weak::clone(&geo);
                bus.spawn(move |stop| read_cell(sub, geo, token, stop));
            }
            // Once the server has the SUBs, later updates reach us.
            bus.sync().await
        })
    }

    fn unwatch(&self, cells: Vec<Cell>) {
        let mut held = self.cells.lock();
        for cell in cells {
            if let Some(token) = held.remove(&cell) {
                token.cancel();
            }
        }
    }

    fn load(self: Arc<Self>, cells: Vec<Cell>) -> BoxFuture<'static, Result<Vec<StoredPosition>, BusError>> {
        let this = self;
        Box::pin(async move {
            let kv = this.store().await?;
            let mut out = Vec::new();
            for chunk in cells.chunks(CELLS_PER_READ) {
                match this.read_cells(&kv, chunk).await {
                    Ok(mut part) => out.append(&mut part),
                    Err(e) => {
                        this.failed(&e).await;
                        return Err(e);
                    }
                }
            }
            Ok(out)
        })
    }

    fn health(&self) -> DependencyStatus {
        self.status.lock().clone()
    }
}

async fn read_cell(
    mut sub: async_nats::Subscriber,
    geo: Weak<NatsGeo>,
    token: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            () = stop.cancelled() => break,
            msg = sub.next() => match msg {
                Some(msg) => {
                    let Some(geo) = geo.upgrade() else { break };
                    geo.on_cell_message(&msg.payload);
                }
                None => break,
            },
        }
    }
    let _ = sub.unsubscribe().await;
}

/// The queue-group member: indexes its share of every location update
/// until the bus stops; resubscribes after a failure.
async fn run_indexer(geo: Weak<NatsGeo>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(this) = geo.upgrade() else { return };
        // The bucket first: indexing needs it, and `/health` then tells at
        // once whether areas work across instances (retried until they do:
        // a NATS without JetStream, or not up yet).
        let ready = tokio::select! {
            () = stop.cancelled() => return,
            r = this.store() => r.is_ok(),
        };
        if !ready {
            drop(this);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        let prefix = this.bus.prefix().to_owned();
        let client = this.bus.client();
        drop(this);
        let sub = tokio::select! {
            () = stop.cancelled() => return,
            sub = client.queue_subscribe(format!("{prefix}.location.*"), format!("{prefix}.geo-indexer")) => sub,
        };
        let mut sub = match sub {
            Ok(sub) => sub,
            Err(e) => {
                tracing::debug!(error = %e, "geo indexer: queue subscribe failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let stopped = {
            // Lanes by vendor: one instance indexes a vendor's updates one
            // at a time (no compare-and-set contention with itself), and
            // different vendors in parallel. A lane keeps only the newest
            // pending update per vendor (areas need the latest position,
            // not every one), so the reader never waits: under load the
            // indexer conflates instead of NATS dropping messages for a
            // slow subscriber, and a vendor's last update is never lost.
            let lanes: Vec<Arc<Lane>> = (0..INDEX_LANES).map(|_| Arc::new(Lane::default())).collect();
            let workers = lanes.iter().map(|lane| {
                let (geo, lane) = (Weak::clone(&geo), Arc::clone(lane));
                async move {
                    // The lane's own: a vendor's updates all pass here.
                    let mut known = Known::default();
                    loop {
                        let next = lane.pending.lock().shift_remove_index(0);
                        let Some((_, msg)) = next else {
                            lane.wake.notified().await;
                            continue;
                        };
                        let Some(this) = geo.upgrade() else { return };
                        this.index_message(&msg, &mut known).await;
                    }
                }
            });
            let workers = futures_util::future::join_all(workers);
            let metrics = geo.upgrade().map(|g| Arc::clone(&g.metrics));
            let read = async {
                while let Some(msg) = sub.next().await {
                    let vendor = msg.subject.as_str().rsplit('.').next().unwrap_or_default().to_owned();
                    let lane = &lanes[lane_of(&vendor)];
                    {
                        let mut pending = lane.pending.lock();
                        if pending.len() >= LANE_MAX_PENDING && !pending.contains_key(&vendor) {
                            // More distinct vendors waiting than a lane holds:
                            // this one's update is lost (counted).
                            if let Some(m) = &metrics {
                                m.area_index_errors.inc();
                            }
                            continue;
                        }
                        pending.insert(vendor, msg);
                    }
                    lane.wake.notify_one();
                }
            };
            tokio::select! {
                () = stop.cancelled() => true,
                _ = futures_util::future::join(read, workers) => false,
            }
        };
        let _ = sub.unsubscribe().await;
        if stopped {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vendor(i: usize) -> VendorId {
        VendorId::parse(&format!("v{i}")).unwrap_or_else(|_| unreachable!())
    }

    fn at(seen: u64) -> Stored {
        Stored { lat: 1.0, long: 2.0, ts: 3, seen }
    }

    #[test]
    fn a_lane_remembers_a_bounded_number_of_vendors() {
        let mut known = Known::default();
        let ttl = Duration::from_secs(300);
        for i in 0..KNOWN_PER_LANE + 100 {
            known.put(&vendor(i), i as u64, at(1_000));
        }
        assert_eq!(known.written.len(), KNOWN_PER_LANE);
        let last = vendor(KNOWN_PER_LANE + 99);
        assert_eq!(known.get(&last, ttl, 1_000).map(|(rev, _)| rev), Some(KNOWN_PER_LANE as u64 + 99));
        // Writing a vendor it holds again replaces, never evicts.
        known.put(&last, 7, at(1_000));
        assert_eq!(known.written.len(), KNOWN_PER_LANE);
        assert_eq!(known.get(&last, ttl, 1_000).map(|(rev, _)| rev), Some(7));
        known.forget(&last);
        assert!(known.get(&last, ttl, 1_000).is_none());
    }

    #[test]
    fn memory_is_used_while_it_holds_and_probed_once_it_mostly_fails() {
        let mut known = Known::default();
        assert!(known.trusted(), "one instance: memory first");
        // Two instances or more: most compare-and-sets from memory fail.
        for _ in 0..8 {
            known.held(false);
        }
        let tried = (0..64).filter(|_| known.trusted()).count();
        assert_eq!(tried, 64 / usize::from(PROBE_EVERY), "distrusted: tried once in {PROBE_EVERY}");
        // Alone again: the probes hold, and trust comes back.
        for _ in 0..8 {
            known.held(true);
        }
        assert!(known.trusted());
    }

    #[test]
    fn a_write_older_than_the_kv_keeps_it_is_not_trusted() {
        let mut known = Known::default();
        let ttl = Duration::from_secs(300);
        known.put(&vendor(1), 5, at(1_000));
        assert!(known.get(&vendor(1), ttl, 1_000 + 299_999).is_some());
        assert!(known.get(&vendor(1), ttl, 1_000 + 300_000).is_none(), "the KV has expired it: read it");
    }
}
