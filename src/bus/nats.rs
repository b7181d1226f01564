//! NATS as the bus: many gateway instances, one stream of updates.
//!
//! Each instance holds a NATS subscription on `<prefix>.<channel>.<vendor>`
//! only while one of its clients wants it (reference-counted, with a short
//! linger so flapping clients do not churn NATS). Payloads are validated
//! like every other entry point; bad ones are counted and dropped. With
//! JetStream, a stream over `<prefix>.>` keeps the last message per subject,
//! which new subscribers receive first.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, Event, Subscriber};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::{Bus, BusError, Deliver, DependencyStatus};
use crate::metrics::Metrics;
use crate::protocol::{Topic, Update};

/// How long a NATS round trip (subscribe confirmation, last-value lookup)
/// may take before the request is answered `unavailable`.
const ROUND_TRIP: Duration = Duration::from_secs(5);
/// Longest pause between JetStream setup attempts while it fails.
const JETSTREAM_RETRY_MAX: Duration = Duration::from_secs(10);

/// Settings of the NATS bus.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// `nats://host:port` (comma-separated for several servers).
    pub url: String,
    /// Subject prefix (`venta`).
    pub prefix: String,
    /// How long an unused subscription is kept before it is dropped.
    pub linger: Duration,
    /// Use JetStream for last values (needs nats-server 2.10+).
    pub jetstream: bool,
    /// How long JetStream keeps a vendor's last update.
    pub last_value_max_age: Duration,
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
    topics: Mutex<HashMap<Topic, Interest>>,
    stream: OnceCell<stream::Stream>,
    jetstream_error: Mutex<Option<String>>,
    /// In-process last values, used when JetStream is off or unavailable.
    last: Mutex<HashMap<Topic, Update>>,
    invalid_logged_at: AtomicU64,
    started: Instant,
    /// Subject this connection answers itself on (see [`Inner::round_trip`]);
    /// `None` if that subscription failed.
    barrier: Option<String>,
}

struct Interest {
    refs: usize,
    /// Bumped on every watch, so a pending linger knows it was overtaken.
    generation: u64,
    sub: Arc<OnceCell<CancellationToken>>,
}

/// The connection to NATS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("NATS at {url}: {source}")]
pub struct ConnectError {
    url: String,
    source: async_nats::ConnectError,
}

impl NatsBus {
    /// Connects (in the background: an unreachable NATS at start leaves the
    /// gateway serving, not ready, and retrying).
    pub async fn connect(opts: NatsOptions, deliver: Deliver, metrics: Arc<Metrics>) -> Result<Self, ConnectError> {
        let outage_started: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let m = Arc::clone(&metrics);
        let client = async_nats::ConnectOptions::new()
            .name("venta-gateway")
            .retry_on_initial_connect()
            .subscription_capacity(8192)
            .event_callback(move |event| {
                let m = Arc::clone(&m);
                let outage_started = Arc::clone(&outage_started);
                async move { on_event(&event, &m, &outage_started) }
            })
            .connect(opts.url.as_str())
            .await
            .map_err(|source| ConnectError { url: opts.url.clone(), source })?;
        let barrier = format!("{}.barrier", client.new_inbox());
        let barrier = match client.subscribe(barrier.clone()).await {
            Ok(sub) => {
                tokio::spawn(answer_barriers(client.clone(), sub));
                Some(barrier)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no NATS barrier subscription: subscribes are confirmed by a flush only");
                None
            }
        };
        let inner = Arc::new(Inner {
            client,
            opts,
            deliver,
            metrics,
            topics: Mutex::new(HashMap::new()),
            stream: OnceCell::new(),
            jetstream_error: Mutex::new(None),
            last: Mutex::new(HashMap::new()),
            invalid_logged_at: AtomicU64::new(0),
            started: Instant::now(),
            barrier,
        });
        if inner.opts.jetstream {
            tokio::spawn(setup_jetstream(Arc::downgrade(&inner)));
        }
        Ok(Self { inner })
    }

    /// The subject of a topic.
    pub fn subject(prefix: &str, topic: &Topic) -> String {
        format!("{prefix}.{}.{}", topic.channel.as_str(), topic.vendor)
    }
}

fn on_event(event: &Event, metrics: &Metrics, outage_started: &Mutex<Option<Instant>>) {
    match event {
        Event::Connected => {
            metrics.bus_connected.set(1);
            if let Some(since) = outage_started.lock().take() {
                let gap = since.elapsed();
                metrics.bus_outage_seconds.inc_by(gap.as_secs_f64());
                tracing::info!(gap_ms = gap.as_millis() as u64, "NATS connection restored; subscriptions replayed");
            } else {
                tracing::info!("connected to NATS");
            }
        }
        Event::Disconnected => {
            metrics.bus_connected.set(0);
            metrics.bus_disconnects.inc();
            outage_started.lock().get_or_insert_with(Instant::now);
            tracing::warn!("NATS connection lost; reconnecting");
        }
        Event::SlowConsumer(sid) => {
            metrics.bus_slow_consumer.inc();
            tracing::warn!(sid, "NATS dropped messages for a slow subscription");
        }
        other => tracing::debug!(event = %other, "NATS event"),
    }
}

async fn setup_jetstream(inner: std::sync::Weak<Inner>) {
    let mut pause = Duration::from_millis(100);
    let mut warned = false;
    loop {
        let Some(me) = inner.upgrade() else { return };
        if me.client.connection_state() == State::Connected {
            let js = jetstream::new(me.client.clone());
            let name = stream_name(&me.opts.prefix);
            let config = stream::Config {
                name: name.clone(),
                subjects: vec![format!("{}.>", me.opts.prefix)],
                max_messages_per_subject: 1,
                max_age: me.opts.last_value_max_age,
                allow_direct: true,
                storage: stream::StorageType::File,
                ..Default::default()
            };
            match tokio::time::timeout(ROUND_TRIP, js.get_or_create_stream(config)).await {
                Ok(Ok(stream)) => {
                    tracing::info!(stream = %name, "JetStream last-value stream ready");
                    *me.jetstream_error.lock() = None;
                    let _ = me.stream.set(stream);
                    return;
                }
                Ok(Err(e)) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(error = %e, "JetStream unavailable (needs nats-server 2.10+ with -js); last values are per instance; retrying quietly");
                    } else {
                        tracing::debug!(error = %e, "JetStream still unavailable");
                    }
                    *me.jetstream_error.lock() = Some(e.to_string());
                }
                Err(_) => *me.jetstream_error.lock() = Some("timed out".into()),
            }
        } else {
            *me.jetstream_error.lock() = Some("NATS not connected".into());
        }
        drop(me);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(JETSTREAM_RETRY_MAX);
    }
}

/// Stream names may not contain `.`; one stream per prefix.
fn stream_name(prefix: &str) -> String {
    let clean: String =
        prefix.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    format!("{clean}_LAST_VALUES")
}

impl Inner {
    fn connected(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            _ => Err(BusError::Unavailable("NATS is not connected".into())),
        }
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
            self.metrics.updates_published.with_label_values(&[topic.channel.as_str(), "nats"]).inc();
            self.deliver.deliver(&update, received);
            if self.stream.get().is_none() {
                self.last.lock().insert(topic.clone(), update);
            }
        }
    }

    /// While the first connection is still being made (startup), waits for
    /// it briefly; after a loss, fails fast so clients hear `unavailable`.
    async fn connected_soon(&self) -> Result<(), BusError> {
        let deadline = Instant::now() + ROUND_TRIP;
        while self.client.connection_state() == State::Pending && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.connected()
    }

    async fn subscribe(self: &Arc<Self>, topic: &Topic) -> Result<CancellationToken, BusError> {
        self.connected_soon().await?;
        let subject = NatsBus::subject(&self.opts.prefix, topic);
        let unavailable = |e: String| BusError::Unavailable(format!("subscribing to {subject}: {e}"));
        let sub = self.client.subscribe(subject.clone()).await.map_err(|e| unavailable(e.to_string()))?;
        // Once the server has our SUB, updates published after the client's
        // ack reach us: the ack waits for that.
        self.round_trip().await.map_err(unavailable)?;
        let cancel = CancellationToken::new();
        tokio::spawn(read_subscription(Arc::clone(self), topic.clone(), sub, cancel.clone()));
        tracing::debug!(%subject, "NATS interest added");
        Ok(cancel)
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

    fn release(self: &Arc<Self>, topic: &Topic, generation: u64) {
        let mut topics = self.topics.lock();
        if let Some(entry) = topics.get(topic)
            && entry.refs == 0
            && entry.generation == generation
        {
            if let Some(cancel) = entry.sub.get() {
                cancel.cancel();
            }
            topics.remove(topic);
            tracing::debug!(%topic, "NATS interest dropped");
        }
    }
}

/// Answers [`Inner::round_trip`] requests (empty replies).
async fn answer_barriers(client: Client, mut sub: Subscriber) {
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply {
            // A lost reply makes that subscribe time out and be retried.
            let _ = client.publish(reply, bytes::Bytes::new()).await;
        }
    }
}

async fn read_subscription(inner: Arc<Inner>, topic: Topic, mut sub: Subscriber, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            msg = sub.next() => match msg {
                Some(msg) => inner.on_message(&topic, &msg.payload),
                None => break,
            },
        }
    }
    let _ = sub.unsubscribe().await;
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
            let cell = {
                let mut topics = self.inner.topics.lock();
                let entry = topics.entry(topic.clone()).or_insert_with(|| Interest {
                    refs: 0,
                    generation: 0,
                    sub: Arc::new(OnceCell::new()),
                });
                entry.refs += 1;
                entry.generation += 1;
                Arc::clone(&entry.sub)
            };
            cell.get_or_try_init(|| self.inner.subscribe(&topic)).await.map(|_| ())
        })
    }

    fn unwatch(&self, topic: &Topic) {
        let generation = {
            let mut topics = self.inner.topics.lock();
            let Some(entry) = topics.get_mut(topic) else { return };
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs > 0 {
                return;
            }
            entry.generation
        };
        let linger = self.inner.opts.linger;
        if linger.is_zero() {
            self.inner.release(topic, generation);
            return;
        }
        let inner = Arc::clone(&self.inner);
        let topic = topic.clone();
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            inner.release(&topic, generation);
        });
    }

    fn last_value(&self, topic: &Topic) -> BoxFuture<'_, Option<Update>> {
        let topic = topic.clone();
        Box::pin(async move {
            let Some(stream) = self.inner.stream.get() else {
                return self.inner.last.lock().get(&topic).cloned();
            };
            let subject = Self::subject(&self.inner.opts.prefix, &topic);
            match tokio::time::timeout(ROUND_TRIP, stream.direct_get_last_for_subject(subject)).await {
                Ok(Ok(msg)) => self.inner.parse(&topic, &msg.payload),
                Ok(Err(e)) if e.kind() == stream::DirectGetErrorKind::NotFound => None,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %topic, "last value lookup failed");
                    None
                }
                Err(_) => None,
            }
        })
    }

    fn health(&self) -> DependencyStatus {
        match self.inner.client.connection_state() {
            State::Connected => DependencyStatus::Ok,
            State::Pending => DependencyStatus::Down(format!("connecting to {}", self.inner.opts.url)),
            State::Disconnected => DependencyStatus::Down(format!("disconnected from {}", self.inner.opts.url)),
        }
    }

    fn extra_checks(&self) -> Vec<(&'static str, DependencyStatus)> {
        let js = if !self.inner.opts.jetstream {
            DependencyStatus::Disabled
        } else if self.inner.stream.get().is_some() {
            DependencyStatus::Ok
        } else {
            let why = self.inner.jetstream_error.lock().clone().unwrap_or_else(|| "starting".into());
            DependencyStatus::Down(why)
        };
        vec![("jetstream", js)]
    }

    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.inner.client.drain().await {
                tracing::debug!(error = %e, "NATS drain");
            }
        })
    }
}
