//! Prometheus metrics. One registry per gateway instance (not the process
//! global), so several gateways can run in one test process.
//!
//! Every label value is a `&'static str` of the gateway's own vocabulary
//! (transports, message types, error codes, reasons). A value chosen by a
//! client, a publisher or a token would be a new series kept for the life
//! of the process: unbounded memory and an unbounded `/metrics`. Client
//! message types go through [`crate::protocol::type_label`], which maps
//! anything unknown to `"unknown"`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::protocol::ErrorCode;

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Open client connections by transport and endpoint.
    pub connections: IntGaugeVec,
    /// Accepted client connections by transport and endpoint.
    pub connections_total: IntCounterVec,
    /// Connections refused, by reason.
    pub connections_rejected: IntCounterVec,
    /// Client messages by transport and type.
    pub messages_in: IntCounterVec,
    /// Messages written to clients by transport and type.
    pub messages_out: IntCounterVec,
    /// Errors sent to clients, by code.
    pub errors: IntCounterVec,
    /// WebTransport location updates for datagram subscriptions: `sent` as
    /// a datagram, or `stream_fallback` when too large for one.
    pub datagrams: IntCounterVec,
    /// Time from an update entering the gateway to its write to a client.
    pub publish_to_write: Histogram,
    /// Updates accepted from publishers, by channel and source.
    pub updates_published: IntCounterVec,
    /// Invalid updates dropped, by source.
    pub updates_invalid: IntCounterVec,
    /// Location updates replaced by newer ones in a slow client's queue.
    pub conflated: IntCounter,
    /// Clients closed with 1013 because their queue overflowed.
    pub slow_consumers_closed: IntCounter,
    /// HTTP connections on the clients' port that are not WebSocket (yet).
    pub http_connections: IntGauge,
    /// Current (topic, connection) subscriptions.
    pub subscriptions: IntGauge,
    /// Current topics with at least one subscriber.
    pub topics: IntGauge,
    /// 1 while the bus (NATS) is connected.
    pub bus_connected: IntGauge,
    /// Times the bus connection was lost.
    pub bus_disconnects: IntCounter,
    /// Seconds without a bus connection (the gap clients did not see live).
    pub bus_outage_seconds: Counter,
    /// Times NATS dropped messages for a subscription we read too slowly.
    pub bus_slow_consumer: IntCounter,
    /// Audit rows waiting in the hot-path queue.
    pub audit_queue_depth: IntGauge,
    /// Audit rows held in the writer's memory (the database is slow or down).
    pub audit_buffered_rows: IntGauge,
    /// Audit rows in the on-disk journal, not yet in the database.
    pub audit_journal_rows: IntGauge,
    /// 1 while the audit database takes writes.
    pub audit_database_up: IntGauge,
    /// Time of one audit insert (one batch).
    pub audit_write_seconds: Histogram,
    /// Rows per audit insert.
    pub audit_batch_rows: Histogram,
    /// Audit rows written (a replayed row already stored counts again).
    pub audit_rows_written: IntCounter,
    /// Failed audit inserts.
    pub audit_write_errors: IntCounter,
    /// Audit rows put in the journal, by reason.
    pub audit_spilled: IntCounterVec,
    /// Audit rows lost, by reason (the journal could not be written).
    pub audit_dropped: IntCounterVec,
    /// Last values dropped from the in-process store to stay within its bytes.
    pub last_value_evictions: IntCounter,
    /// Area subscriptions held by this instance's clients.
    pub areas: IntGauge,
    /// Grid cells this instance receives positions of.
    pub area_cells: IntGauge,
    /// Vendor positions held for those cells.
    pub area_vendors: IntGauge,
    /// Area events queued to clients, by message type.
    pub area_events: IntCounterVec,
    /// Location updates this instance failed to index for areas.
    pub area_index_errors: IntCounter,
    /// 1 while a configured dependency is up, 0 while down; no series for a
    /// disabled one. Set from the `/health` checks at every scrape.
    pub dependency_up: IntGaugeVec,
    /// `WS_MAX_CONNECTIONS`, so an alert can compare connections with it.
    pub connections_max: IntGauge,
    /// The busiest vendors for the dashboard. Not exported: vendor ids are
    /// chosen by publishers, so they are never label values.
    pub busiest: crate::dashboard::TopVendors,
    /// `messages_out` by (transport, type), resolved once.
    out_children: Children,
    /// `updates_published` by (channel, source), resolved once.
    published_children: Children,
    in_total: AtomicU64,
    out_total: AtomicU64,
}

/// A metrics registration failed: a programming error (duplicate name).
#[derive(Debug, thiserror::Error)]
#[error("metrics registration: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| registry.register(c);
        let connections =
            IntGaugeVec::new(Opts::new("venta_connections", "Open client connections"), &["transport", "endpoint"])?;
        let connections_total = IntCounterVec::new(
            Opts::new("venta_connections_total", "Accepted client connections"),
            &["transport", "endpoint"],
        )?;
        let connections_rejected = IntCounterVec::new(
            Opts::new("venta_connections_rejected_total", "Refused client connections by reason"),
            &["reason"],
        )?;
        let messages_in = IntCounterVec::new(
            Opts::new("venta_messages_in_total", "Client messages received"),
            &["transport", "type"],
        )?;
        let messages_out = IntCounterVec::new(
            Opts::new("venta_messages_out_total", "Messages written to clients"),
            &["transport", "type"],
        )?;
        let errors = IntCounterVec::new(Opts::new("venta_errors_total", "Errors sent to clients by code"), &["code"])?;
        let datagrams = IntCounterVec::new(
            Opts::new(
                "venta_webtransport_datagrams_total",
                "Location updates for datagram subscriptions: sent as datagrams, or on the stream when too large",
            ),
            &["outcome"],
        )?;
        let publish_to_write = Histogram::with_opts(
            HistogramOpts::new(
                "venta_publish_to_write_seconds",
                "Time from an update entering the gateway to its write to a client socket; one observation per socket write, for the oldest update in it",
            )
            .buckets(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0,
            ]),
        )?;
        let updates_published = IntCounterVec::new(
            Opts::new("venta_updates_published_total", "Updates accepted from publishers"),
            &["channel", "source"],
        )?;
        let updates_invalid =
            IntCounterVec::new(Opts::new("venta_updates_invalid_total", "Invalid updates dropped"), &["source"])?;
        let conflated = IntCounter::new("venta_outbox_conflated_total", "Location updates conflated for slow clients")?;
        let slow_consumers_closed =
            IntCounter::new("venta_slow_consumers_closed_total", "Clients closed with 1013 for not keeping up")?;
        let http_connections = IntGauge::new(
            "venta_http_connections",
            "Open HTTP connections on the clients' port that have not upgraded to WebSocket (bounded by HTTP_MAX_CONNECTIONS)",
        )?;
        let subscriptions = IntGauge::new("venta_subscriptions", "Current subscriptions")?;
        let topics = IntGauge::new("venta_topics", "Topics with at least one subscriber")?;
        let bus_connected = IntGauge::new(
            "venta_bus_connected",
            "1 while the bus is connected (NATS; always 1 with the in-process bus of a single instance)",
        )?;
        let bus_disconnects = IntCounter::new("venta_bus_disconnects_total", "NATS connection losses")?;
        let bus_outage_seconds =
            Counter::new("venta_bus_outage_seconds_total", "Seconds spent without a NATS connection")?;
        let bus_slow_consumer =
            IntCounter::new("venta_bus_slow_consumer_total", "NATS slow-consumer events (messages dropped by NATS)")?;
        let audit_queue_depth = IntGauge::new("venta_audit_queue_depth", "Audit rows waiting in the hot-path queue")?;
        let audit_buffered_rows =
            IntGauge::new("venta_audit_buffered_rows", "Audit rows held in memory by the writer")?;
        let audit_journal_rows =
            IntGauge::new("venta_audit_journal_rows", "Audit rows in the on-disk journal, not yet in the database")?;
        let audit_database_up = IntGauge::new("venta_audit_database_up", "1 while the audit database takes writes")?;
        let audit_write_seconds = Histogram::with_opts(
            HistogramOpts::new("venta_audit_write_seconds", "Time of one audit insert (one batch)")
                .buckets(vec![0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
        )?;
        let audit_batch_rows = Histogram::with_opts(
            HistogramOpts::new("venta_audit_batch_rows", "Rows per audit insert")
                .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0]),
        )?;
        let audit_rows_written = IntCounter::new("venta_audit_rows_written_total", "Audit rows written")?;
        let audit_write_errors = IntCounter::new("venta_audit_write_errors_total", "Failed audit inserts")?;
        let audit_spilled = IntCounterVec::new(
            Opts::new("venta_audit_spilled_total", "Audit rows put in the on-disk journal, by reason"),
            &["reason"],
        )?;
        let audit_dropped = IntCounterVec::new(
            Opts::new("venta_audit_dropped_total", "Audit rows lost (journal not writable or unreadable), by reason"),
            &["reason"],
        )?;
        reg(Box::new(audit_queue_depth.clone()))?;
        reg(Box::new(audit_buffered_rows.clone()))?;
        reg(Box::new(audit_journal_rows.clone()))?;
        reg(Box::new(audit_database_up.clone()))?;
        reg(Box::new(audit_write_seconds.clone()))?;
        reg(Box::new(audit_batch_rows.clone()))?;
        reg(Box::new(audit_rows_written.clone()))?;
        reg(Box::new(audit_write_errors.clone()))?;
        reg(Box::new(audit_spilled.clone()))?;
        reg(Box::new(audit_dropped.clone()))?;
        for reason in ["queue_full", "buffer_full", "shutdown", "writer_stopped"] {
            audit_spilled.with_label_values(&[reason]);
        }
        for reason in ["journal_error", "journal_unreadable", "journal_full"] {
            audit_dropped.with_label_values(&[reason]);
        }
        let last_value_evictions = IntCounter::new(
            "venta_last_value_evictions_total",
            "Last values dropped from the in-process store to stay within LAST_VALUE_MAX_BYTES",
        )?;
        reg(Box::new(last_value_evictions.clone()))?;
        let areas = IntGauge::new("venta_areas", "Area subscriptions of this instance's clients")?;
        let area_cells = IntGauge::new("venta_area_cells", "Grid cells this instance receives vendor positions of")?;
        let area_vendors = IntGauge::new("venta_area_vendors", "Vendor positions held for the watched cells")?;
        let area_events = IntCounterVec::new(
            Opts::new("venta_area_events_total", "Area events queued to clients, by message type"),
            &["type"],
        )?;
        for ty in ["vendor_entered", "location_updated", "vendor_left"] {
            area_events.with_label_values(&[ty]);
        }
        let area_index_errors = IntCounter::new(
            "venta_area_index_errors_total",
            "Location updates this instance failed to index for area subscriptions (shared state unreachable)",
        )?;
        reg(Box::new(area_index_errors.clone()))?;
        reg(Box::new(areas.clone()))?;
        reg(Box::new(area_cells.clone()))?;
        reg(Box::new(area_vendors.clone()))?;
        reg(Box::new(area_events.clone()))?;
        reg(Box::new(bus_connected.clone()))?;
        reg(Box::new(bus_disconnects.clone()))?;
        reg(Box::new(bus_outage_seconds.clone()))?;
        reg(Box::new(bus_slow_consumer.clone()))?;
        reg(Box::new(connections.clone()))?;
        reg(Box::new(connections_total.clone()))?;
        reg(Box::new(connections_rejected.clone()))?;
        reg(Box::new(messages_in.clone()))?;
        reg(Box::new(messages_out.clone()))?;
        reg(Box::new(errors.clone()))?;
        reg(Box::new(datagrams.clone()))?;
        reg(Box::new(publish_to_write.clone()))?;
        reg(Box::new(updates_published.clone()))?;
        reg(Box::new(updates_invalid.clone()))?;
        reg(Box::new(conflated.clone()))?;
        reg(Box::new(slow_consumers_closed.clone()))?;
        reg(Box::new(subscriptions.clone()))?;
        reg(Box::new(http_connections.clone()))?;
        reg(Box::new(topics.clone()))?;
        let dependency_up = IntGaugeVec::new(
            Opts::new("venta_dependency_up", "1 while a configured dependency is up, 0 while it is down"),
            &["dependency"],
        )?;
        let connections_max =
            IntGauge::new("venta_connections_max", "Client connections this instance accepts (WS_MAX_CONNECTIONS)")?;
        reg(Box::new(dependency_up.clone()))?;
        reg(Box::new(connections_max.clone()))?;
        // Pre-create the error series so dashboards see zeros, not gaps.
        for code in ErrorCode::ALL {
            errors.with_label_values(&[code.as_str()]);
        }
        for outcome in ["sent", "stream_fallback"] {
            datagrams.with_label_values(&[outcome]);
        }
        Ok(Self {
            registry,
            connections,
            connections_total,
            connections_rejected,
            messages_in,
            messages_out,
            errors,
            datagrams,
            publish_to_write,
            updates_published,
            updates_invalid,
            conflated,
            slow_consumers_closed,
            http_connections,
            subscriptions,
            topics,
            bus_connected,
            bus_disconnects,
            bus_outage_seconds,
            bus_slow_consumer,
            audit_queue_depth,
            audit_buffered_rows,
            audit_journal_rows,
            audit_database_up,
            audit_write_seconds,
            audit_batch_rows,
            audit_rows_written,
            audit_write_errors,
            audit_spilled,
            audit_dropped,
            areas,
            area_cells,
            area_vendors,
            area_events,
            area_index_errors,
            last_value_evictions,
            dependency_up,
            connections_max,
            busiest: crate::dashboard::TopVendors::default(),
            out_children: Children::new(TRANSPORTS, crate::protocol::ServerMessage::TYPE_NAMES),
            published_children: Children::new(CHANNELS, SOURCES),
            in_total: AtomicU64::new(0),
            out_total: AtomicU64::new(0),
        })
    }

    /// Sets the `venta_dependency_up` series of one health check.
    pub fn set_dependency(&self, name: &'static str, status: &crate::bus::DependencyStatus) {
        use crate::bus::DependencyStatus;
        match status {
            DependencyStatus::Ok => self.dependency_up.with_label_values(&[name]).set(1),
            DependencyStatus::Down(_) => self.dependency_up.with_label_values(&[name]).set(0),
            DependencyStatus::Disabled => {
                let _ = self.dependency_up.remove_label_values(&[name]);
            }
        }
    }

    /// Counts one client message.
    pub fn message_in(&self, transport: &'static str, ty: &'static str) {
        self.messages_in.with_label_values(&[transport, ty]).inc();
        self.in_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts `n` messages of one type written to a client.
    pub fn messages_out(&self, transport: &'static str, ty: &'static str, n: u64) {
        self.out_children.inc_by(&self.messages_out, transport, ty, n);
        self.out_total.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` updates accepted on `channel` from `source` (`"nats"`,
    /// `"http"`, `"grpc"`).
    pub fn published(&self, channel: crate::protocol::Channel, source: &'static str, n: u64) {
        self.published_children.inc_by(&self.updates_published, channel.as_str(), source, n);
    }

    /// Totals of messages in and out, for `/ws/status`.
    pub fn totals(&self) -> (u64, u64) {
        (self.in_total.load(Ordering::Relaxed), self.out_total.load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Text encoding of gathered families only fails on invalid metric
        // names, which registration already rejected.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The transports' labels (`Transport::as_str`).
const TRANSPORTS: &[&str] = &["websocket", "webtransport", "sse"];
/// The channels' labels.
const CHANNELS: &[&str] = &["location", "vendor"];
/// Where published updates come from.
const SOURCES: &[&str] = &["nats", "http", "grpc"];

/// The children of a two-label counter whose label values come from two
/// known lists, each resolved on first use. `with_label_values` hashes both
/// values and takes the vector's lock on every call; `messages_out` is
/// counted on every socket write (0.9 % of a fan-out profile). Resolving
/// lazily keeps `/metrics` showing only the series that were used.
#[derive(Debug)]
struct Children {
    first: &'static [&'static str],
    second: &'static [&'static str],
    slots: Box<[OnceLock<IntCounter>]>,
}

impl Children {
    fn new(first: &'static [&'static str], second: &'static [&'static str]) -> Self {
        Self { first, second, slots: (0..first.len() * second.len()).map(|_| OnceLock::new()).collect() }
    }

    /// Adds `n` to the series (`a`, `b`) of `vec`; values outside the lists
    /// take the label lookup.
    fn inc_by(&self, vec: &IntCounterVec, a: &'static str, b: &'static str, n: u64) {
        let pos = |names: &[&str], v: &str| names.iter().position(|s| *s == v);
        let slot = match (pos(self.first, a), pos(self.second, b)) {
            (Some(i), Some(j)) => self.slots.get(i * self.second.len() + j),
            _ => None,
        };
        match slot {
            Some(slot) => slot.get_or_init(|| vec.with_label_values(&[a, b])).inc_by(n),
            None => vec.with_label_values(&[a, b]).inc_by(n),
        }
    }
}
