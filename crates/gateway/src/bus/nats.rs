//! NATS as the bus: many gateway instances, one stream of updates.
//!
//! Each instance holds a NATS subscription on `<prefix>.<channel>.<vendor>`
//! only while one of its clients wants it (reference-counted, with a short
//! linger so flapping clients do not churn NATS). Payloads are validated
//! like every other entry point; bad ones are counted and dropped. With
//! JetStream, a stream over `<prefix>.>` keeps the last message per subject,
//! which new subscribers receive first. The stream is checked in the
//! background and set up again whenever it is gone (a NATS that came back
//! without its state), so `/health` says what a new subscriber will get.
//!
//! On a NATS cluster, interest travels between nodes asynchronously: a SUB
//! confirmed by our own node may not be known yet to the node a publisher
//! is on. A [`ClusterBarrier`] (one small connection pinned to each node)
//! closes that gap, so a `subscribed` ack means live on every node.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, Event, ServerAddr, Subscriber};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{Notify, OnceCell, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::last::LastValues;
use super::{Bus, BusError, BusStats, Deliver, DependencyStatus};
use crate::metrics::Metrics;
use crate::protocol::{Topic, Update};

/// How long a NATS round trip (subscribe confirmation, last-value lookup,
/// stream check) may take before it counts as failed.
const ROUND_TRIP: Duration = Duration::from_secs(5);

/// Settings of the NATS bus.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// `nats://host:port`, or several comma-separated (`nats://a:1,nats://b:2`).
    pub url: String,
    /// Subject prefix (`venta`).
    pub prefix: String,
    /// How long an unused subscription is kept before it is dropped.
    pub linger: Duration,
    /// Use JetStream for last values (needs nats-server 2.10+).
    pub jetstream: bool,
    /// How long JetStream keeps a vendor's last update.
    pub last_value_max_age: Duration,
    /// Bytes of last values kept in process while JetStream is off or down.
    pub last_value_max_bytes: usize,
    /// Bytes the JetStream stream may hold (its `max_bytes`).
    pub stream_max_bytes: usize,
    /// Replicas of the JetStream stream (its `num_replicas`): 3 on a
    /// cluster keeps the last values through the loss of a node.
    pub last_value_replicas: usize,
    /// Largest message the stream takes (its `max_msg_size`): the publish limit.
    pub max_message_size: usize,
    /// How often the connection (NATS PING) and the stream are checked.
    pub probe_interval: Duration,
}

impl NatsOptions {
    /// Options with the documented defaults for everything but the address
    /// and prefix.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: prefix.into(),
            linger: Duration::from_secs(2),
            jetstream: true,
            last_value_max_age: Duration::from_secs(86_400),
            last_value_max_bytes: 64 << 20,
            stream_max_bytes: 1 << 30,
            last_value_replicas: 1,
            max_message_size: crate::ingest::http::MAX_BODY,
            probe_interval: Duration::from_secs(2),
        }
    }
}

/// The NATS-backed bus.
pub struct NatsBus {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    opts: NatsOptions,
    deliver: Deliver,
    metrics: Arc<Metrics>,
    link: Arc<Link>,
    topics: Mutex<HashMap<Topic, Interest>>,
    /// Interests whose last client left, oldest first (the linger is the
    /// same for all, so deadlines are in order): one reaper task, not a
    /// sleeping task per unwatch.
    lingering: Mutex<VecDeque<(Instant, Topic, u64)>>,
    linger_wake: Arc<Notify>,
    /// Handle on the JetStream stream (no server state; see [`Link::js_ok`]).
    /// Its JetStream context owns a task of the client's (an acker): the
    /// handle is taken at [`Bus::drain`], so that task ends at shutdown too.
    stream: Mutex<Option<stream::Stream<()>>>,
    /// Whether a handle was had at start (for `/health`).
    has_stream: bool,
    /// In-process last values, used while JetStream is off or unusable.
    last: LastValues,
    invalid_logged_at: AtomicU64,
    started: Instant,
    /// Subject this connection answers itself on (see [`Inner::round_trip`]);
    /// `None` if that subscription failed.
    barrier: Option<String>,
    /// Makes a new SUB known cluster-wide before it is confirmed.
    cluster: Arc<ClusterBarrier>,
    /// Every task of the bus (barrier answers, linger reaper, JetStream
    /// supervisor, one reader per subscription): [`Bus::drain`] waits for
    /// them, so none outlives the gateway.
    tasks: TaskTracker,
    /// Ends those tasks: cancelled by [`Bus::drain`] and on drop.
    stop: CancellationToken,
}

/// What the NATS event callback and the bus share.
struct Link {
    metrics: Arc<Metrics>,
    /// The servers, credentials removed: for logs and `/health`.
    url: String,
    state: watch::Sender<LinkState>,
    /// [`LinkState::Up`] or not, for [`Bus::up_changes`].
    up: watch::Sender<bool>,
    outage_started: Mutex<Option<Instant>>,
    /// Whether the current outage (or the failing start) was logged.
    outage_logged: AtomicBool,
    /// Whether the JetStream stream was found usable by the last check.
    js_ok: AtomicBool,
    js_error: Mutex<String>,
    /// Asks the JetStream supervisor to check now (reconnected, or a lookup
    /// failed).
    js_recheck: Notify,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkState {
    /// No connection attempt has finished yet.
    Starting,
    Up,
    Down,
}

struct Interest {
    refs: usize,
    /// Bumped on every watch, so a pending linger knows it was overtaken.
    generation: u64,
    /// Cancelled when the interest is released, also mid-subscribe: a
    /// subscription completing after its release ends at once.
    cancel: CancellationToken,
    ready: Arc<OnceCell<()>>,
}

/// The NATS bus could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `NATS_URL` is not a list of NATS server addresses.
    #[error("invalid NATS_URL {url:?}: {reason}")]
    InvalidUrl {
        /// The value, credentials removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client could not be created.
    #[error("NATS at {url}: {reason}")]
    Client {
        /// The servers, credentials removed.
        url: String,
        /// Why.
        reason: String,
    },
}

impl ConnectError {
    /// Whether this is a configuration mistake (exit status 2), not an
    /// environment failure.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::InvalidUrl { .. })
    }
}

/// Parses `NATS_URL`: one address or a comma-separated list.
pub fn parse_servers(url: &str) -> Result<Vec<ServerAddr>, ConnectError> {
    let invalid = |reason: String| ConnectError::InvalidUrl { url: redact(url), reason };
    let mut servers = Vec::new();
    for one in url.split(',').map(str::trim) {
        if one.is_empty() {
            return Err(invalid("an empty server address in the list".into()));
        }
        let addr: ServerAddr = one.parse().map_err(|e: std::io::Error| invalid(format!("{}: {e}", redact(one))))?;
        if addr.host().is_empty() {
            return Err(invalid(format!("{}: no host", redact(one))));
        }
        servers.push(addr);
    }
    Ok(servers)
}

/// The server list with any `user:password@` replaced by `***@`.
pub fn redact(url: &str) -> String {
    let one = |s: &str| -> String {
        let (scheme, rest) = match s.find("://") {
            Some(i) => s.split_at(i + 3),
            None => ("", s),
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
            None => s.to_owned(),
        }
    };
    url.split(',').map(one).collect::<Vec<_>>().join(",")
}

impl NatsBus {
    /// Connects (in the background: an unreachable NATS at start leaves the
    /// gateway serving, not ready, and retrying).
    pub async fn connect(opts: NatsOptions, deliver: Deliver, metrics: Arc<Metrics>) -> Result<Self, ConnectError> {
        let servers = parse_servers(&opts.url)?;
        let link = Arc::new(Link {
            metrics: Arc::clone(&metrics),
            url: redact(&opts.url),
            state: watch::Sender::new(LinkState::Starting),
            up: watch::Sender::new(false),
            outage_started: Mutex::new(None),
            outage_logged: AtomicBool::new(false),
            js_ok: AtomicBool::new(false),
            js_error: Mutex::new(if opts.jetstream { "starting".into() } else { String::new() }),
            js_recheck: Notify::new(),
        });
        metrics.bus_connected.set(0);
        let callback_link = Arc::clone(&link);
        let client = async_nats::ConnectOptions::new()
            .name("venta-gateway")
            .retry_on_initial_connect()
            .subscription_capacity(8192)
            // A dead connection (no RST) is noticed after two unanswered PINGs.
            .ping_interval(opts.probe_interval)
            .event_callback(move |event| {
                let link = Arc::clone(&callback_link);
                async move { link.on_event(&event) }
            })
            .connect(servers.clone())
            .await
            .map_err(|e| ConnectError::Client { url: link.url.clone(), reason: e.to_string() })?;
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let barrier = format!("{}.barrier", client.new_inbox());
        let barrier = match client.subscribe(barrier.clone()).await {
            Ok(sub) => {
                tasks.spawn(answer_barriers(client.clone(), sub, stop.clone()));
                Some(barrier)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no NATS barrier subscription: subscribes are confirmed by a flush only");
                None
            }
        };
        let stream = if opts.jetstream {
            jetstream::new(client.clone()).get_stream_no_info(stream_name(&opts.prefix)).await.ok()
        } else {
            None
        };
        let cluster = Arc::new(ClusterBarrier::new(client.new_inbox(), &servers, opts.probe_interval));
        let last = LastValues::new(opts.last_value_max_bytes, metrics.last_value_evictions.clone());
        let inner = Arc::new(Inner {
            client,
            opts,
            deliver,
            metrics,
            link,
            topics: Mutex::new(HashMap::new()),
            lingering: Mutex::new(VecDeque::new()),
            linger_wake: Arc::new(Notify::new()),
            has_stream: stream.is_some(),
            stream: Mutex::new(stream),
            last,
            invalid_logged_at: AtomicU64::new(0),
            started: Instant::now(),
            barrier,
            cluster,
            tasks,
            stop,
        });
        inner.tasks.spawn(keep_cluster_barrier(Arc::downgrade(&inner), inner.stop.clone()));
        inner.tasks.spawn(reap_lingering(Arc::downgrade(&inner), inner.stop.clone()));
        if inner.opts.jetstream {
            inner.tasks.spawn(supervise_jetstream(Arc::downgrade(&inner), inner.stop.clone()));
        }
        Ok(Self { inner })
    }

    /// The connection, for engines that share it (area subscriptions).
    pub fn client(&self) -> Client {
        self.inner.client.clone()
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.opts.prefix
    }

    /// Resolves once the server has processed everything this connection
    /// sent before (see [`Inner::round_trip`]): after it, a new SUB is live.
    pub async fn sync(&self) -> Result<(), BusError> {
        self.inner.connected_soon().await?;
        let probe = self.inner.cluster.send_probe(&self.inner.client).await;
        self.inner.round_trip().await.map_err(BusError::Unavailable)?;
        self.inner.cluster.wait(probe).await;
        Ok(())
    }

    /// Runs a task of an engine sharing the connection on the bus's tracker:
    /// it gets the bus's stop token and [`Bus::drain`] waits for it.
    pub fn spawn<F>(&self, task: impl FnOnce(CancellationToken) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let fut = task(self.inner.stop.clone());
        self.inner.tasks.spawn(fut);
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        self.inner.connected().is_ok()
    }

    /// The subject of a topic.
    pub fn subject(prefix: &str, topic: &Topic) -> String {
        format!("{prefix}.{}.{}", topic.channel.as_str(), topic.vendor)
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl Link {
    fn on_event(&self, event: &Event) {
        match event {
            Event::Connected => {
                self.metrics.bus_connected.set(1);
                self.state.send_replace(LinkState::Up);
                self.up.send_if_modified(|up| !std::mem::replace(up, true));
                self.outage_logged.store(false, Ordering::Relaxed);
                if let Some(since) = self.outage_started.lock().take() {
                    let gap = since.elapsed();
                    self.metrics.bus_outage_seconds.inc_by(gap.as_secs_f64());
                    tracing::info!(nats = %self.url, gap_ms = gap.as_millis() as u64, "NATS connection restored; subscriptions replayed");
                } else {
                    tracing::info!(nats = %self.url, "connected to NATS");
                }
                // The server may have come back without its JetStream state.
                self.js_recheck.notify_one();
            }
            Event::Disconnected => {
                self.metrics.bus_connected.set(0);
                self.metrics.bus_disconnects.inc();
                self.state.send_replace(LinkState::Down);
                self.up.send_if_modified(|up| std::mem::replace(up, false));
                self.js_down("NATS not connected");
                self.outage_started.lock().get_or_insert_with(Instant::now);
                self.outage_logged.store(true, Ordering::Relaxed);
                tracing::warn!(nats = %self.url, "NATS connection lost: serving, not ready, reconnecting");
            }
            Event::ClientError(e) if *self.state.borrow() != LinkState::Up => {
                // A failed connection attempt: once per outage, with where
                // and what the gateway does meanwhile.
                self.state.send_if_modified(|s| std::mem::replace(s, LinkState::Down) == LinkState::Starting);
                self.js_down("NATS not connected");
                self.outage_started.lock().get_or_insert_with(Instant::now);
                if !self.outage_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(nats = %self.url, error = %e, "NATS unreachable: serving, not ready, retrying");
                } else {
                    tracing::debug!(nats = %self.url, error = %e, "NATS still unreachable");
                }
            }
            Event::SlowConsumer(sid) => {
                self.metrics.bus_slow_consumer.inc();
                tracing::warn!(sid, "NATS dropped messages for a slow subscription");
            }
            other => tracing::debug!(event = %other, "NATS event"),
        }
    }

    fn js_down(&self, why: &str) {
        *self.js_error.lock() = why.to_owned();
        self.js_ok.store(false, Ordering::Relaxed);
    }
}

/// Keeps the JetStream stream set up with the current limits: created or
/// updated at start and after every reconnect, checked every probe
/// interval, and set up again when it is gone.
async fn supervise_jetstream(inner: Weak<Inner>, stop: CancellationToken) {
    let mut warned = false;
    loop {
        let Some(me) = inner.upgrade() else { return };
        let link = Arc::clone(&me.link);
        let interval = me.opts.probe_interval;
        tokio::select! {
            () = stop.cancelled() => return,
            () = me.check_jetstream(&mut warned) => {}
        }
        drop(me);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = link.js_recheck.notified() => {}
        }
    }
}

/// Releases interests whose linger ran out.
async fn reap_lingering(inner: Weak<Inner>, stop: CancellationToken) {
    loop {
        let Some(me) = inner.upgrade() else { return };
        let next = me.reap(Instant::now());
        let wake = Arc::clone(&me.linger_wake);
        // Not holding the bus while asleep: dropping it ends this task.
        drop(me);
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = due => {}
            // A permit is kept if the wake-up came before this wait began.
            () = wake.notified() => {}
        }
    }
}

/// Stream names may not contain `.`; one stream per prefix.
fn stream_name(prefix: &str) -> String {
    jetstream_name(prefix, "LAST_VALUES")
}

/// A JetStream stream or bucket name of this prefix: names may not contain
/// `.`, so `venta.eu` gives `VENTA_EU_<suffix>`.
pub fn jetstream_name(prefix: &str, suffix: &str) -> String {
    let clean: String =
        prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("{clean}_{suffix}")
}

impl Inner {
    fn connected(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            // The Connected event can be seen a moment before the state.
            State::Pending if *self.link.state.borrow() == LinkState::Up => Ok(()),
            _ => Err(BusError::Unavailable(format!("NATS at {} is not connected", self.link.url))),
        }
    }

    fn js_ok(&self) -> bool {
        self.has_stream && self.link.js_ok.load(Ordering::Relaxed)
    }

    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: stream_name(&self.opts.prefix),
            // The updates only: other subjects under the prefix (the area
            // cells' `<prefix>.geo.*`) are live traffic, not last values.
            subjects: vec![format!("{}.location.*", self.opts.prefix), format!("{}.vendor.*", self.opts.prefix)],
            max_messages_per_subject: 1,
            max_age: self.opts.last_value_max_age,
            max_bytes: i64::try_from(self.opts.stream_max_bytes).unwrap_or(i64::MAX),
            max_message_size: i32::try_from(self.opts.max_message_size).unwrap_or(i32::MAX),
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            storage: stream::StorageType::File,
            num_replicas: self.opts.last_value_replicas.max(1),
            ..Default::default()
        }
    }

    /// One JetStream check: a usable stream stays usable if it still
    /// exists; otherwise it is created, or updated to the current limits.
    async fn check_jetstream(&self, warned: &mut bool) {
        if self.client.connection_state() != State::Connected {
            self.link.js_down("NATS not connected");
            return;
        }
        let Some(stream) = self.stream.lock().clone() else { return };
        if self.js_ok() {
            match tokio::time::timeout(ROUND_TRIP, stream.get_info()).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => tracing::debug!(error = %e, "JetStream stream check failed; setting it up again"),
                Err(_) => {
                    self.js_failed("stream check timed out".into(), warned);
                    return;
                }
            }
        }
        let js = jetstream::new(self.client.clone());
        match tokio::time::timeout(ROUND_TRIP, js.create_or_update_stream(self.stream_config())).await {
            Ok(Ok(info)) => {
                tracing::info!(
                    stream = %info.config.name,
                    max_bytes = info.config.max_bytes,
                    "JetStream last-value stream ready"
                );
                *warned = false;
                // JetStream holds the values from now on; what the fallback
                // has would only go stale.
                self.last.clear();
                self.link.js_ok.store(true, Ordering::Relaxed);
            }
            Ok(Err(e)) => self.js_failed(e.to_string(), warned),
            Err(_) => self.js_failed("timed out".into(), warned),
        }
    }

    fn js_failed(&self, why: String, warned: &mut bool) {
        if !std::mem::replace(warned, true) {
            tracing::warn!(error = %why, "JetStream unavailable (needs nats-server 2.10+ with -js): last values are per instance until it is back; retrying");
        } else {
            tracing::debug!(error = %why, "JetStream still unavailable");
        }
        self.link.js_down(&why);
    }

    fn parse(&self, topic: &Topic, payload: &[u8]) -> Option<Update> {
        match Update::from_publish_json(topic.channel, payload, Some(topic.vendor.as_str())) {
            Ok(update) => Some(update),
            Err(e) => {
                self.metrics.updates_invalid.with_label_values(&["nats"]).inc();
                // At most one log line per second: a broken publisher must
                // not flood the logs.
                let now = self.started.elapsed().as_secs() + 1;
                if self.invalid_logged_at.swap(now, Ordering::Relaxed) != now {
                    tracing::warn!(topic = %topic, error = %e, "dropped an invalid update from NATS");
                }
                None
            }
        }
    }

    fn on_message(&self, topic: &Topic, payload: &[u8]) {
        let received = Instant::now();
        if let Some(update) = self.parse(topic, payload) {
            self.metrics.published(topic.channel, "nats", 1);
            self.deliver.deliver(&update, received);
            if !self.js_ok() {
                self.last.insert(&update);
            }
        }
    }

    /// While the first connection attempt is still under way (startup),
    /// waits for it briefly; once NATS is known to be unreachable, fails
    /// fast so clients and publishers hear `unavailable` at once.
    async fn connected_soon(&self) -> Result<(), BusError> {
        let mut state = self.link.state.subscribe();
        let _ = tokio::time::timeout(ROUND_TRIP, state.wait_for(|s| *s != LinkState::Starting)).await;
        self.connected()
    }

    async fn subscribe(self: &Arc<Self>, topic: &Topic, cancel: CancellationToken) -> Result<(), BusError> {
        self.connected_soon().await?;
        let subject = NatsBus::subject(&self.opts.prefix, topic);
        let unavailable = |e: String| BusError::Unavailable(format!("subscribing to {subject}: {e}"));
        let mut sub = self.client.subscribe(subject.clone()).await.map_err(|e| unavailable(e.to_string()))?;
        // Sent right behind the SUB: it reaches the other nodes after the
        // SUB's interest does (see [`ClusterBarrier`]).
        let probe = self.cluster.send_probe(&self.client).await;
        // Once the server has our SUB, updates published after the client's
        // ack reach us: the ack waits for that.
        if let Err(e) = self.round_trip().await {
            let _ = sub.unsubscribe().await;
            return Err(unavailable(e));
        }
        // And once every other node has it too.
        self.cluster.wait(probe).await;
        if cancel.is_cancelled() {
            // Released while subscribing: nobody is left to unwatch it.
            let _ = sub.unsubscribe().await;
            return Err(unavailable("interest dropped while subscribing".into()));
        }
        self.tasks.spawn(read_subscription(Arc::clone(self), topic.clone(), sub, cancel));
        tracing::debug!(%subject, "NATS interest added");
        Ok(())
    }

    /// Returns once the server has processed everything this connection sent
    /// before: NATS handles one connection's operations in order, so a
    /// request answered by our own barrier subscription comes back only after
    /// the server took the earlier SUBs. (`Client::flush` only writes the
    /// socket: an update published from another connection right after it
    /// could still beat our SUB to the server, and be missed.)
    async fn round_trip(&self) -> Result<(), String> {
        let sent = match &self.barrier {
            Some(subject) => {
                tokio::time::timeout(ROUND_TRIP, self.client.request(subject.clone(), bytes::Bytes::new()))
                    .await
                    .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
            }
            None => tokio::time::timeout(ROUND_TRIP, self.client.flush()).await.map(|r| r.map_err(|e| e.to_string())),
        };
        sent.unwrap_or_else(|_| Err("timed out".into()))
    }

    /// One less unit of interest; at zero, released now or after the linger.
    fn unwatch(&self, topic: &Topic) {
        let generation = {
            let mut topics = self.topics.lock();
            let Some(entry) = topics.get_mut(topic) else { return };
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs > 0 {
                return;
            }
            entry.generation
        };
        if self.opts.linger.is_zero() {
            self.release(topic, generation);
            return;
        }
        self.lingering.lock().push_back((Instant::now() + self.opts.linger, topic.clone(), generation));
        self.linger_wake.notify_one();
    }

    /// Releases every interest whose linger ended by `now`; returns when
    /// the next one ends.
    fn reap(&self, now: Instant) -> Option<Instant> {
        loop {
            let due = {
                let mut lingering = self.lingering.lock();
                match lingering.front() {
                    Some((at, _, _)) if *at <= now => lingering.pop_front(),
                    Some((at, _, _)) => return Some(*at),
                    None => {
                        shrink(&mut lingering);
                        return None;
                    }
                }
            };
            if let Some((_, topic, generation)) = due {
                self.release(&topic, generation);
            }
        }
    }

    fn release(&self, topic: &Topic, generation: u64) {
        let mut topics = self.topics.lock();
        if let Some(entry) = topics.get(topic)
            && entry.refs == 0
            && entry.generation == generation
        {
            entry.cancel.cancel();
            topics.remove(topic);
            tracing::debug!(%topic, "NATS interest dropped");
            if topics.capacity() > 1024 && topics.len() < topics.capacity() / 4 {
                // A burst of distinct vendors must not keep its peak table.
                let keep = topics.len() * 2;
                topics.shrink_to(keep);
            }
        }
    }
}

fn shrink<T>(q: &mut VecDeque<T>) {
    if q.capacity() > 1024 {
        q.shrink_to(64);
    }
}

/// Answers [`Inner::round_trip`] requests (empty replies) until the bus
/// stops (its client clone would otherwise keep the connection open).
async fn answer_barriers(client: Client, mut sub: Subscriber, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            msg = sub.next() => msg,
        };
        let Some(msg) = msg else { break };
        if let Some(reply) = msg.reply {
            // A lost reply makes that subscribe time out and be retried.
            let _ = client.publish(reply, bytes::Bytes::new()).await;
        }
    }
    let _ = sub.unsubscribe().await;
}

async fn read_subscription(inner: Arc<Inner>, topic: Topic, mut sub: Subscriber, cancel: CancellationToken) {
    let stop = inner.stop.clone();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            // A drain that NATS does not answer must not leave readers behind.
            () = stop.cancelled() => break,
            msg = sub.next() => match msg {
                Some(msg) => inner.on_message(&topic, &msg.payload),
                None => break,
            },
        }
    }
    let _ = sub.unsubscribe().await;
}

/// Undoes a watch whose future was dropped before it resolved (the client
/// went away mid-subscribe): such a watch counts as never made.
struct WatchGuard<'a> {
    inner: &'a Inner,
    topic: &'a Topic,
    armed: bool,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.inner.unwatch(self.topic);
        }
    }
}

impl Bus for NatsBus {
    fn publish(&self, update: Update) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.inner.connected_soon().await?;
            let subject = Self::subject(&self.inner.opts.prefix, &update.topic());
            self.inner
                .client
                .publish(subject, update.to_publish_json().into())
                .await
                .map_err(|e| BusError::Unavailable(format!("NATS publish: {e}")))
        })
    }

    fn watch(&self, topic: &Topic) -> BoxFuture<'_, Result<(), BusError>> {
        let topic = topic.clone();
        Box::pin(async move {
            let (ready, cancel) = {
                let mut topics = self.inner.topics.lock();
                let entry = topics.entry(topic.clone()).or_insert_with(|| Interest {
                    refs: 0,
                    generation: 0,
                    cancel: CancellationToken::new(),
                    ready: Arc::new(OnceCell::new()),
                });
                entry.refs += 1;
                entry.generation += 1;
                (Arc::clone(&entry.ready), entry.cancel.clone())
            };
            let mut guard = WatchGuard { inner: &self.inner, topic: &topic, armed: true };
            let result = ready.get_or_try_init(|| self.inner.subscribe(&topic, cancel)).await.map(|_| ());
            // Resolved: from here the caller owes the unwatch, as documented.
            guard.armed = false;
            result
        })
    }

    fn unwatch(&self, topic: &Topic) {
        self.inner.unwatch(topic);
    }

    fn last_value(&self, topic: &Topic) -> BoxFuture<'_, Option<Update>> {
        let topic = topic.clone();
        Box::pin(async move {
            let handle = if self.inner.js_ok() { self.inner.stream.lock().clone() } else { None };
            let Some(stream) = handle else { return self.inner.last.get(&topic) };
            let subject = Self::subject(&self.inner.opts.prefix, &topic);
            match tokio::time::timeout(ROUND_TRIP, stream.direct_get_last_for_subject(subject)).await {
                Ok(Ok(msg)) => self.inner.parse(&topic, &msg.payload),
                Ok(Err(e)) if e.kind() == stream::DirectGetErrorKind::NotFound => None,
                Ok(Err(e)) => {
                    // The stream may be gone (a NATS without its state):
                    // check now rather than at the next interval.
                    tracing::debug!(error = %e, %topic, "last value lookup failed");
                    self.inner.link.js_recheck.notify_one();
                    self.inner.last.get(&topic)
                }
                Err(_) => self.inner.last.get(&topic),
            }
        })
    }

    fn health(&self) -> DependencyStatus {
        match self.inner.client.connection_state() {
            State::Connected => DependencyStatus::Ok,
            State::Pending => DependencyStatus::Down(format!("connecting to {}", self.inner.link.url)),
            State::Disconnected => DependencyStatus::Down(format!("disconnected from {}", self.inner.link.url)),
        }
    }

    fn up_changes(&self) -> watch::Receiver<bool> {
        self.inner.link.up.subscribe()
    }

    fn extra_checks(&self) -> Vec<(&'static str, DependencyStatus)> {
        let js = if !self.inner.opts.jetstream {
            DependencyStatus::Disabled
        } else if self.inner.js_ok() {
            DependencyStatus::Ok
        } else if !self.inner.has_stream {
            DependencyStatus::Down("no stream handle".into())
        } else {
            DependencyStatus::Down(self.inner.link.js_error.lock().clone())
        };
        vec![("jetstream", js)]
    }

    fn stats(&self) -> BusStats {
        let (last_values, last_value_bytes) = self.inner.last.usage();
        BusStats {
            interests: self.inner.topics.lock().len(),
            lingering: self.inner.lingering.lock().len(),
            last_values,
            last_value_bytes,
        }
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Every client has left by now: what the readers would still
            // deliver has no one to go to. The tasks end whether or not
            // NATS answers the drain (the caller bounds this future).
            self.inner.stop.cancel();
            self.inner.tasks.close();
            self.inner.stream.lock().take();
            let peers = self.inner.cluster.take_peers();
            let peers_drained = futures_util::future::join_all(peers.iter().map(|p| p.client.drain()));
            let (drained, (), _) = tokio::join!(self.inner.client.drain(), self.inner.tasks.wait(), peers_drained);
            if let Err(e) = drained {
                tracing::debug!(error = %e, "NATS drain");
            }
        })
    }
}

/// Most nodes a cluster barrier keeps a connection to (discovered node
/// lists are the server's word; this bounds what one gateway opens).
const MAX_PEERS: usize = 16;

/// How long a subscribe waits for one node to see its probe before going
/// on without it (that node is then skipped until a probe reaches it).
const PEER_WAIT: Duration = Duration::from_secs(2);

/// Makes a `subscribed` ack mean "live on every node of the cluster".
///
/// A node sends a new SUB's interest (`RS+`) to the other nodes on its
/// route after taking the SUB, asynchronously: an update published on
/// another node in between is not forwarded, and a round trip to our own
/// node cannot tell (a second one neither). What a node sends on a route
/// arrives in order, and one account's traffic uses one route connection,
/// so a message published on our connection right after the SUB reaches
/// node X only after X has the SUB's interest. The barrier holds one
/// connection pinned to each node (a *peer*, subscribed to this gateway's
/// probe subject); a subscribe publishes a numbered probe behind its SUB and
/// waits until every connected peer has seen that number.
///
/// A peer that has not seen a probe since it (re)connected is not waited
/// for (its node may not have our peer's interest routed yet, so the probe
/// could not arrive); a background task probes until it has. A single
/// server has no other nodes: no peers, nothing to wait for.
struct ClusterBarrier {
    /// What the peers subscribe to (unique to this gateway).
    subject: String,
    next: AtomicU64,
    peers: Mutex<Vec<Arc<Peer>>>,
    /// `host:port` of every node a peer was made for.
    known: Mutex<HashSet<String>>,
    /// The configured servers: template for discovered ones (scheme,
    /// credentials), and the first nodes to have peers.
    configured: Vec<ServerAddr>,
    probe_interval: Duration,
}

/// A connection pinned to one node, seeing this gateway's probes.
struct Peer {
    /// `host:port`, for logs.
    node: String,
    client: Client,
    /// The highest probe number seen (probes from one connection arrive in
    /// order).
    seen: watch::Sender<u64>,
    /// Whether a probe reached it since it last connected.
    confirmed: Arc<AtomicBool>,
}

fn node_key(addr: &ServerAddr) -> String {
    format!("{}:{}", addr.host(), addr.port())
}

impl ClusterBarrier {
    fn new(inbox: String, servers: &[ServerAddr], probe_interval: Duration) -> Self {
        Self {
            subject: format!("{inbox}.cluster"),
            next: AtomicU64::new(0),
            peers: Mutex::new(Vec::new()),
            known: Mutex::new(HashSet::new()),
            configured: servers.to_vec(),
            probe_interval,
        }
    }

    /// Publishes the next probe on `client`; its number, for [`Self::wait`].
    /// Without peers nothing is sent.
    async fn send_probe(&self, client: &Client) -> u64 {
        if self.peers.lock().is_empty() {
            return 0;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        // A lost probe only makes the wait below time out.
        let _ = client.publish(self.subject.clone(), id.to_string().into()).await;
        id
    }

    /// Waits until every connected, confirmed peer has seen probe `id`.
    /// Never fails: a node that does not answer in [`PEER_WAIT`] is left
    /// out (and logged) rather than refusing the subscribe; its publishers
    /// cannot reach us anyway while it is cut off.
    async fn wait(&self, id: u64) {
        if id == 0 {
            return;
        }
        let peers: Vec<Arc<Peer>> = self
            .peers
            .lock()
            .iter()
            .filter(|p| p.confirmed.load(Ordering::Relaxed) && p.client.connection_state() == State::Connected)
            .cloned()
            .collect();
        let waits = peers.iter().map(|peer| async move {
            let mut seen = peer.seen.subscribe();
            if tokio::time::timeout(PEER_WAIT, seen.wait_for(|s| *s >= id)).await.is_err() {
                peer.confirmed.store(false, Ordering::Relaxed);
                tracing::warn!(node = %peer.node, "a NATS node did not see a new subscription in time; not waiting for it until it does");
            }
        });
        futures_util::future::join_all(waits).await;
    }

    /// Nodes that should have a peer and have none yet: the configured
    /// servers (when more than one) and those the server announces.
    fn missing(&self, announced: &[String]) -> Vec<ServerAddr> {
        let mut candidates: Vec<ServerAddr> =
            if self.configured.len() > 1 { self.configured.clone() } else { Vec::new() };
        let template = self.configured.first();
        for url in announced {
            let Ok(found) = url.parse::<ServerAddr>() else { continue };
            // The announced address with the configured scheme and
            // credentials (a node announces only host:port).
            let rebuilt = template.and_then(|t| {
                let mut u = t.clone().into_inner();
                u.set_host(Some(found.host())).ok()?;
                u.set_port(Some(found.port())).ok()?;
                u.as_str().parse::<ServerAddr>().ok()
            });
            candidates.push(rebuilt.unwrap_or(found));
        }
        // Several nodes are a cluster; one announced address alone is the
        // server itself.
        let mut known = self.known.lock();
        let distinct: HashSet<String> = candidates.iter().map(node_key).chain(known.iter().cloned()).collect();
        if distinct.len() < 2 {
            return Vec::new();
        }
        let mut out = Vec::new();
        for addr in candidates {
            if known.len() >= MAX_PEERS {
                break;
            }
            if known.insert(node_key(&addr)) {
                out.push(addr);
            }
        }
        out
    }

    /// Removes the peers (for drain).
    fn take_peers(&self) -> Vec<Arc<Peer>> {
        std::mem::take(&mut *self.peers.lock())
    }

    fn has_unconfirmed(&self) -> bool {
        self.peers
            .lock()
            .iter()
            .any(|p| !p.confirmed.load(Ordering::Relaxed) && p.client.connection_state() == State::Connected)
    }
}

/// Opens the peers of new nodes (configured or announced), probes until
/// every connected peer is confirmed, and ends with the bus.
async fn keep_cluster_barrier(inner: Weak<Inner>, stop: CancellationToken) {
    let mut since_discovery = Duration::MAX;
    loop {
        let Some(me) = inner.upgrade() else { return };
        let barrier = Arc::clone(&me.cluster);
        if since_discovery >= barrier.probe_interval {
            since_discovery = Duration::ZERO;
            let announced = me.client.server_info().connect_urls;
            for addr in barrier.missing(&announced) {
                let node = node_key(&addr);
                match open_peer(addr, &barrier, &me.tasks, &stop).await {
                    Ok(peer) => barrier.peers.lock().push(peer),
                    Err(e) => {
                        // Forgotten, so the next round tries again.
                        barrier.known.lock().remove(&node);
                        tracing::warn!(%node, error = %e, "no probe connection to a NATS node: subscribes do not wait for it");
                    }
                }
            }
        }
        if barrier.has_unconfirmed() {
            let _ = barrier.send_probe(&me.client).await;
        }
        drop(me);
        let pause = Duration::from_millis(100);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => since_discovery = since_discovery.saturating_add(pause),
        }
    }
}

/// Connects a peer to exactly `addr` (no failover: it stands for that node)
/// and starts its reader.
async fn open_peer(
    addr: ServerAddr,
    barrier: &ClusterBarrier,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Arc<Peer>, String> {
    let node = node_key(&addr);
    let confirmed = Arc::new(AtomicBool::new(false));
    let on_event = Arc::clone(&confirmed);
    let client = async_nats::ConnectOptions::new()
        .name("venta-gateway-probe")
        .ignore_discovered_servers()
        .retry_on_initial_connect()
        .ping_interval(barrier.probe_interval)
        .event_callback(move |event| {
            let confirmed = Arc::clone(&on_event);
            async move {
                if matches!(event, Event::Disconnected) {
                    // Back, it needs a probe through before it is waited for.
                    confirmed.store(false, Ordering::Relaxed);
                }
            }
        })
        .connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let sub = client.subscribe(barrier.subject.clone()).await.map_err(|e| e.to_string())?;
    let peer = Arc::new(Peer { node, client, seen: watch::Sender::new(0), confirmed });
    tasks.spawn(read_probes(Arc::downgrade(&peer), sub, stop.clone()));
    Ok(peer)
}

async fn read_probes(peer: Weak<Peer>, mut sub: Subscriber, stop: CancellationToken) {
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            msg = sub.next() => msg,
        };
        let Some(msg) = msg else { break };
        let Some(peer) = peer.upgrade() else { break };
        let Some(id) = std::str::from_utf8(&msg.payload).ok().and_then(|s| s.parse::<u64>().ok()) else { continue };
        peer.confirmed.store(true, Ordering::Relaxed);
        peer.seen.send_if_modified(|seen| {
            let newer = id > *seen;
            if newer {
                *seen = id;
            }
            newer
        });
    }
    let _ = sub.unsubscribe().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_is_several_servers() {
        let servers = parse_servers("nats://a:1, nats://b:2,c").map_err(|e| e.to_string());
        let ports: Vec<u16> = servers.iter().flatten().map(ServerAddr::port).collect();
        assert_eq!(ports, vec![1, 2, 4222]);
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        for bad in ["nats://u:hunter2@host:99999", "http://u:hunter2@host:4222", "nats://a:1,,nats://b:2", "nats://"] {
            let Err(e) = parse_servers(bad) else { panic!("{bad} accepted") };
            let msg = e.to_string();
            assert!(e.is_config(), "{msg}");
            assert!(msg.contains("NATS_URL") && !msg.contains("hunter2"), "{msg}");
            // Said once: loggers that walk the source chain must not repeat it.
            assert!(std::error::Error::source(&e).is_none(), "{msg}");
        }
        assert_eq!(redact("nats://u:p@h:1,tls://t@h2"), "nats://***@h:1,tls://***@h2");
    }
}
