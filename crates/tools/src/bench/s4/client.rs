//! The two kinds of client of the area scenario, over WebSocket JSON.
//!
//! An area client subscribes one box (`subscribe_area`, areaId `a`) and keeps
//! the set of vendors it believes inside: the snapshot, plus
//! `vendor_entered`, minus `vendor_left`. It pans when told (the same areaId
//! with another box) and, asked for a [`Report`], hands over that set and
//! the box it holds, for the convergence check. A per-vendor client follows
//! a few vendors with `subscribe_location`. Both count what they receive
//! into the shared [`Tally`], with the latency from each update's
//! `timestamp` (set by the generator when it left).

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::super::marker;
use super::super::ws::{WsConnector, close_reason};
use super::city::Rect;
use super::tally::{Lat, Tally};

const PONG: &str = r#"{"type":"pong"}"#;
/// The one area each client holds.
const AREA_ID: &str = "a";

/// What the driver tells an area client.
pub enum Cmd {
    /// Move the box (a pan); ignored while the previous pan is unanswered.
    Pan(Rect),
    /// Hand over the current view.
    Report(oneshot::Sender<Report>),
}

/// An area client's view, for the convergence check.
#[derive(Debug, Clone)]
pub struct Report {
    /// The box the gateway last acknowledged.
    pub rect: Rect,
    /// Vendors believed inside, sorted.
    pub inside: Vec<u32>,
    /// Ids believed inside that are not the run's vendors.
    pub foreign: usize,
    /// A pan sent and not answered yet.
    pub pan_pending: bool,
    /// The snapshot was truncated (the view cannot be complete).
    pub truncated: bool,
}

/// What every client shares.
pub struct Ctx {
    pub connector: Arc<WsConnector>,
    pub tally: Arc<Tally>,
    pub vendor_prefix: String,
    /// Handshakes in flight at most.
    pub sem: Arc<Semaphore>,
    /// One handshake (upgrade, subscribe, ack, snapshot) at most this long.
    pub timeout: Duration,
    pub src: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    data: Data<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Data<'a> {
    vendor_id: Option<&'a str>,
    area_id: Option<&'a str>,
    timestamp: Option<&'a str>,
    reason: Option<&'a str>,
    #[serde(borrow)]
    vendors: Option<Vec<SnapshotVendor<'a>>>,
    #[serde(default)]
    truncated: bool,
    #[serde(default)]
    snapshot: bool,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotVendor<'a> {
    vendor_id: &'a str,
}

fn subscribe_area(user: &str, r: &Rect) -> Message {
    let m = json!({"type": "subscribe_area", "id": "s4",
        "data": {"areaId": AREA_ID, "userId": user, "bbox": r.bbox_json()}});
    Message::text(m.to_string())
}

/// Microseconds since an update's `timestamp`.
fn age_us(timestamp: Option<&str>) -> Option<u64> {
    let sent = marker::parse_rfc3339(timestamp?)?;
    Some(marker::now_ns().saturating_sub(sent) / 1000)
}

/// A vendor number of the run, from its id.
fn vendor_index(prefix: &str, id: &str) -> Option<u32> {
    id.strip_prefix(prefix)?.parse().ok()
}

struct Area {
    rect: Rect,
    pending: Option<Rect>,
    /// Right after a pan's ack: the difference follows.
    in_diff: bool,
    inside: HashSet<u32>,
    foreign: HashSet<String>,
    snapshot: bool,
    truncated: bool,
}

impl Area {
    fn add(&mut self, prefix: &str, id: &str) -> bool {
        match vendor_index(prefix, id) {
            Some(v) => self.inside.insert(v),
            None => self.foreign.insert(id.to_owned()),
        }
    }

    fn remove(&mut self, prefix: &str, id: &str) -> bool {
        match vendor_index(prefix, id) {
            Some(v) => self.inside.remove(&v),
            None => self.foreign.remove(id),
        }
    }

    fn report(&self) -> Report {
        let mut inside: Vec<u32> = self.inside.iter().copied().collect();
        inside.sort_unstable();
        Report {
            rect: self.rect,
            inside,
            foreign: self.foreign.len(),
            pan_pending: self.pending.is_some(),
            truncated: self.truncated,
        }
    }

    /// Applies one message of the area; `false` for a broken contract.
    fn apply(&mut self, d: &Data<'_>, ty: &str, prefix: &str, tally: &Tally) -> bool {
        let c = &tally.c;
        match ty {
            "area_snapshot" => {
                if self.snapshot {
                    return false; // a moved area gets no new snapshot
                }
                self.snapshot = true;
                self.truncated = d.truncated;
                c.snapshots.fetch_add(1, Relaxed);
                if d.truncated {
                    c.truncated.fetch_add(1, Relaxed);
                }
                let vendors = d.vendors.as_deref().unwrap_or_default();
                c.snapshot_vendors.fetch_add(vendors.len() as u64, Relaxed);
                vendors.iter().all(|v| self.add(prefix, v.vendor_id))
            }
            "vendor_entered" => {
                if self.in_diff {
                    c.pan_entered.fetch_add(1, Relaxed);
                } else {
                    c.entered.fetch_add(1, Relaxed);
                    if let Some(us) = age_us(d.timestamp) {
                        tally.latency(Lat::Entered, us);
                    }
                }
                self.snapshot && d.vendor_id.is_some_and(|v| self.add(prefix, v))
            }
            "vendor_left" => {
                match d.reason {
                    Some("area_changed") => c.pan_left.fetch_add(1, Relaxed),
                    Some("expired") => {
                        self.in_diff = false;
                        c.left_expired.fetch_add(1, Relaxed)
                    }
                    _ => {
                        self.in_diff = false;
                        c.left_moved.fetch_add(1, Relaxed)
                    }
                };
                self.snapshot && d.vendor_id.is_some_and(|v| self.remove(prefix, v))
            }
            // location_updated with our areaId
            _ => {
                self.in_diff = false;
                c.moved.fetch_add(1, Relaxed);
                if let Some(us) = age_us(d.timestamp) {
                    tally.latency(Lat::Moved, us);
                }
                let known = d.vendor_id.is_some_and(|v| match vendor_index(prefix, v) {
                    Some(i) => self.inside.contains(&i),
                    None => self.foreign.contains(v),
                });
                self.snapshot && known
            }
        }
    }
}

/// What one read produced.
enum Read<'a> {
    Msg(Incoming<'a>),
    Ping,
}

fn parse(t: &str) -> Option<Read<'_>> {
    let m: Incoming<'_> = serde_json::from_str(t).ok()?;
    Some(if m.ty == "ping" { Read::Ping } else { Read::Msg(m) })
}

async fn pong(ws: &mut WebSocketStream<TcpStream>) -> Result<(), String> {
    ws.send(Message::text(PONG)).await.map_err(|e| format!("send pong: {e}"))
}

/// The next text frame (pings answered), or why the connection ended.
async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> Result<tokio_tungstenite::tungstenite::Utf8Bytes, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t),
            Some(Ok(Message::Close(f))) => return Err(format!("closed by server: {}", close_reason(f))),
            None => return Err("connection ended".into()),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("read: {e}")),
        }
    }
}

async fn open(ctx: &Ctx, i: usize) -> Result<WebSocketStream<TcpStream>, String> {
    let src = (!ctx.src.is_empty()).then(|| ctx.src[i % ctx.src.len()]);
    ctx.connector.upgrade(src).await
}

fn refusal(d: &Data<'_>) -> String {
    format!(
        "subscribe refused: {} ({})",
        d.code.as_deref().unwrap_or_default(),
        d.message.as_deref().unwrap_or_default()
    )
}

/// Opens, subscribes `rect`, waits for the ack and the snapshot.
async fn open_area(ctx: &Ctx, i: usize, user: &str, rect: Rect) -> Result<(WebSocketStream<TcpStream>, Area), String> {
    let mut ws = open(ctx, i).await?;
    ws.send(subscribe_area(user, &rect)).await.map_err(|e| format!("send subscribe_area: {e}"))?;
    let mut area = Area {
        rect,
        pending: None,
        in_diff: false,
        inside: HashSet::new(),
        foreign: HashSet::new(),
        snapshot: false,
        truncated: false,
    };
    let mut acked = false;
    while !area.snapshot {
        let t = next_text(&mut ws).await.map_err(|e| format!("before the snapshot: {e}"))?;
        match parse(t.as_str()) {
            Some(Read::Ping) => pong(&mut ws).await?,
            Some(Read::Msg(m)) if m.ty == "error" => return Err(refusal(&m.data)),
            Some(Read::Msg(m)) if m.ty == "subscribed" => acked = true,
            Some(Read::Msg(m)) if m.ty == "area_snapshot" && acked => {
                area.apply(&m.data, "area_snapshot", &ctx.vendor_prefix, &ctx.tally);
            }
            Some(Read::Msg(m)) if m.data.area_id.is_some() => {
                // The contract: nothing of the area before its snapshot.
                ctx.tally.c.violations.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
    Ok((ws, area))
}

/// An area client: connects (under the handshake semaphore), then follows
/// its area until `cmds` closes. `live` is decremented when it ends.
pub async fn area_client(ctx: Arc<Ctx>, i: usize, user: String, rect: Rect, mut cmds: mpsc::Receiver<Cmd>) {
    let tally = Arc::clone(&ctx.tally);
    let opened = {
        let Ok(_permit) = ctx.sem.acquire().await else { return };
        tokio::time::timeout(ctx.timeout, open_area(&ctx, i, &user, rect)).await
    };
    let (mut ws, mut area) = match opened {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return failed(&tally, &e),
        Err(_) => return failed(&tally, "handshake timed out"),
    };
    tally.c.area_connected.fetch_add(1, Relaxed);
    let prefix = ctx.vendor_prefix.as_str();
    loop {
        tokio::select! {
            frame = next_text(&mut ws) => {
                let t = match frame {
                    Ok(t) => t,
                    Err(e) => return lost(&tally, &e),
                };
                match parse(t.as_str()) {
                    Some(Read::Ping) => {
                        if let Err(e) = pong(&mut ws).await {
                            return lost(&tally, &e);
                        }
                    }
                    Some(Read::Msg(m)) => match m.ty.as_ref() {
                        "subscribed" => {
                            if let Some(r) = area.pending.take() {
                                area.rect = r;
                                area.in_diff = true;
                                tally.c.pans_acked.fetch_add(1, Relaxed);
                            }
                        }
                        "error" => tally.error(&refusal(&m.data)),
                        ty @ ("area_snapshot" | "vendor_entered" | "vendor_left" | "location_updated")
                            if m.data.area_id == Some(AREA_ID) && !area.apply(&m.data, ty, prefix, &tally) =>
                        {
                            tally.c.violations.fetch_add(1, Relaxed);
                        }
                        _ => {}
                    },
                    None => { tally.c.unparsed.fetch_add(1, Relaxed); }
                }
            }
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Pan(r)) => {
                    if area.pending.is_some() {
                        tally.c.pans_skipped.fetch_add(1, Relaxed);
                    } else {
                        if let Err(e) = ws.send(subscribe_area(&user, &r)).await {
                            return lost(&tally, &format!("send pan: {e}"));
                        }
                        area.pending = Some(r);
                        tally.c.pans_sent.fetch_add(1, Relaxed);
                    }
                }
                Some(Cmd::Report(tx)) => { let _ = tx.send(area.report()); }
                None => {
                    let _ = ws.close(None).await;
                    return;
                }
            },
        }
    }
}

/// A per-vendor client following `vendors` (indices): subscribes each,
/// waits for every ack, then counts updates until `stop` closes.
pub async fn location_client(ctx: Arc<Ctx>, i: usize, user: String, vendors: Vec<u32>, mut stop: mpsc::Receiver<Cmd>) {
    let tally = Arc::clone(&ctx.tally);
    let opened = {
        let Ok(_permit) = ctx.sem.acquire().await else { return };
        tokio::time::timeout(ctx.timeout, open_location(&ctx, i, &user, &vendors)).await
    };
    let mut ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => return failed(&tally, &e),
        Err(_) => return failed(&tally, "handshake timed out"),
    };
    tally.c.location_connected.fetch_add(1, Relaxed);
    let prefix = ctx.vendor_prefix.as_str();
    // Last timestamp seen per followed vendor: anything not newer is a dup.
    let mut last: Vec<(u32, u64)> = vendors.iter().map(|v| (*v, 0)).collect();
    loop {
        tokio::select! {
            frame = next_text(&mut ws) => {
                let t = match frame {
                    Ok(t) => t,
                    Err(e) => return lost(&tally, &e),
                };
                match parse(t.as_str()) {
                    Some(Read::Ping) => {
                        if let Err(e) = pong(&mut ws).await {
                            return lost(&tally, &e);
                        }
                    }
                    Some(Read::Msg(m)) if m.ty == "location_updated" && m.data.area_id.is_none() => {
                        if m.data.snapshot {
                            tally.c.location_snapshots.fetch_add(1, Relaxed);
                            continue;
                        }
                        let v = m.data.vendor_id.and_then(|id| vendor_index(prefix, id));
                        let ts = m.data.timestamp.and_then(marker::parse_rfc3339).unwrap_or(0);
                        match last.iter_mut().find(|(lv, _)| Some(*lv) == v) {
                            Some((_, seen)) if ts > *seen => {
                                *seen = ts;
                                tally.c.location.fetch_add(1, Relaxed);
                                tally.latency(Lat::Location, marker::now_ns().saturating_sub(ts) / 1000);
                            }
                            _ => { tally.c.location_dup.fetch_add(1, Relaxed); }
                        }
                    }
                    Some(Read::Msg(m)) if m.ty == "error" => tally.error(&refusal(&m.data)),
                    Some(_) => {}
                    None => { tally.c.unparsed.fetch_add(1, Relaxed); }
                }
            }
            cmd = stop.recv() => match cmd {
                Some(Cmd::Report(_) | Cmd::Pan(_)) => {}
                None => {
                    let _ = ws.close(None).await;
                    return;
                }
            },
        }
    }
}

async fn open_location(ctx: &Ctx, i: usize, user: &str, vendors: &[u32]) -> Result<WebSocketStream<TcpStream>, String> {
    let mut ws = open(ctx, i).await?;
    for v in vendors {
        let m = json!({"type": "subscribe_location", "id": "s4",
            "data": {"vendorId": format!("{}{v}", ctx.vendor_prefix), "userId": user}});
        ws.send(Message::text(m.to_string())).await.map_err(|e| format!("send subscribe_location: {e}"))?;
    }
    let mut acks = 0;
    while acks < vendors.len() {
        let t = next_text(&mut ws).await.map_err(|e| format!("before the acks: {e}"))?;
        match parse(t.as_str()) {
            Some(Read::Ping) => pong(&mut ws).await?,
            Some(Read::Msg(m)) if m.ty == "error" => return Err(refusal(&m.data)),
            Some(Read::Msg(m)) if m.ty == "subscribed" => acks += 1,
            Some(Read::Msg(m)) if m.ty == "location_updated" && m.data.snapshot => {
                ctx.tally.c.location_snapshots.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
    Ok(ws)
}

fn failed(tally: &Tally, e: &str) {
    tally.error(e);
    tally.c.connect_failed.fetch_add(1, Relaxed);
}

fn lost(tally: &Tally, e: &str) {
    tally.error(e);
    tally.c.dropped.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area() -> Area {
        Area {
            rect: Rect { south: 0, west: 0, north: 1, east: 1 },
            pending: None,
            in_diff: false,
            inside: HashSet::new(),
            foreign: HashSet::new(),
            snapshot: false,
            truncated: false,
        }
    }

    fn msg(t: &str) -> Incoming<'_> {
        serde_json::from_str(t).unwrap_or_else(|e| panic!("{e}: {t}"))
    }

    #[test]
    fn snapshot_plus_entered_minus_left_and_contract_breaks_are_seen() {
        let tally = Tally::default();
        let mut a = area();
        let apply = |a: &mut Area, t: &str| {
            let m = msg(t);
            a.apply(&m.data, &m.ty, "v", &tally)
        };
        // An event before the snapshot breaks the contract.
        assert!(!apply(&mut a, r#"{"type":"vendor_entered","data":{"areaId":"a","vendorId":"v9"}}"#));
        a.inside.clear();
        let snap = r#"{"type":"area_snapshot","data":{"areaId":"a","vendors":[{"vendorId":"v1","location":{"lat":1,"long":2},"timestamp":"2026-01-01T00:00:00Z"},{"vendorId":"v2"}],"truncated":false}}"#;
        assert!(apply(&mut a, snap));
        assert!(apply(
            &mut a,
            r#"{"type":"vendor_entered","data":{"areaId":"a","vendorId":"v3","timestamp":"2026-01-01T00:00:00Z"}}"#
        ));
        assert!(apply(
            &mut a,
            r#"{"type":"location_updated","data":{"areaId":"a","vendorId":"v3","timestamp":"2026-01-01T00:00:00Z"}}"#
        ));
        assert!(apply(&mut a, r#"{"type":"vendor_left","data":{"areaId":"a","vendorId":"v1","reason":"moved"}}"#));
        // Entered twice, moved or left while not inside: broken.
        assert!(!apply(&mut a, r#"{"type":"vendor_entered","data":{"areaId":"a","vendorId":"v3"}}"#));
        assert!(!apply(&mut a, r#"{"type":"location_updated","data":{"areaId":"a","vendorId":"v1"}}"#));
        assert!(!apply(&mut a, r#"{"type":"vendor_left","data":{"areaId":"a","vendorId":"v1","reason":"moved"}}"#));
        assert!(!apply(&mut a, snap), "a second snapshot");
        assert_eq!(a.report().inside, [2, 3]);
        // A pan's difference is counted apart (and has no latency).
        a.in_diff = true;
        assert!(apply(
            &mut a,
            r#"{"type":"vendor_entered","data":{"areaId":"a","vendorId":"v7","timestamp":"2026-01-01T00:00:00Z"}}"#
        ));
        assert!(apply(
            &mut a,
            r#"{"type":"vendor_left","data":{"areaId":"a","vendorId":"v2","reason":"area_changed"}}"#
        ));
        assert!(apply(&mut a, r#"{"type":"vendor_entered","data":{"areaId":"a","vendorId":"other"}}"#));
        let r = a.report();
        assert_eq!((r.inside.as_slice(), r.foreign), (&[3, 7][..], 1));
        let c = tally.c.get();
        assert_eq!((c.snapshots, c.snapshot_vendors, c.entered, c.moved, c.left_moved), (1, 2, 3, 2, 2));
        assert_eq!((c.pan_entered, c.pan_left, c.area_deliveries()), (2, 1, 10));
        // Only the messages with a timestamp have a latency.
        assert_eq!(tally.histogram(Lat::Entered).len(), 1);
        assert_eq!(tally.histogram(Lat::Moved).len(), 1);
    }
}
