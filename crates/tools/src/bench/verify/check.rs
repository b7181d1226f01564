//! The checker's verdict, pure: what one client received, set against what
//! was published, in the spirit of Jepsen's checkers — the history is
//! recorded during the run and judged only afterwards, so the judgement
//! cannot disturb the run and can be unit-tested on hand-made histories.
//!
//! A client's history is a sequence of [`Rec`]s: each (re)connection starts
//! with the `subscribed` ack, then live updates and snapshots, and maybe a
//! close. What the publisher published is, per vendor, the time each
//! sequence number was handed to the publisher ([`PubLog`]), taken before it
//! left, so "published after the ack" is never claimed for an update that
//! might have left before it.
//!
//! An update of the client's vendor that it never received is:
//! - not owed when it was published before the client's first ack;
//! - **lost** when it was published after an ack and the same connection
//!   received a later update (a hole on a FIFO path), or when the
//!   connection is still open at the end (the drain is over);
//! - a **gap** otherwise: published after the last update a connection
//!   received before it closed, or while the client was reconnecting. A
//!   gap is expected across a gateway restart and reported, not hidden.
//!
//! A live update received twice is a **duplicate**, one received after a
//! later one of the same vendor is **out of order**, and the client
//! **converged** when the last value it received (live or snapshot) is the
//! last one published for its vendor.

/// One event of a client's history, in arrival order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rec {
    /// `subscribed` ack of a (re)connection, received at this time (ns since the epoch).
    Ack(u64),
    /// A live update with this sequence number.
    Live(u64),
    /// The last known value sent on subscribe (`snapshot: true`).
    Snapshot(u64),
    /// An update of the client's vendor sent before this run began (an
    /// older run's value, e.g. from the last-value store).
    Old { snapshot: bool },
    /// The connection closed (by the server, or a read error).
    Closed,
}

/// Per vendor, the time (ns) each sequence number was handed to the
/// publisher: `log[v][seq]`. Sequences start at 0 and have no holes.
pub type PubLog = Vec<Vec<u64>>;

/// What the run's path promises, which decides what fails it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Every update published after the ack reaches the client, once, in
    /// order (WebSocket and WebTransport streams with a client that keeps up).
    Lossless,
    /// The gateway may conflate (a slow consumer: newest per vendor wins):
    /// losses are by design; duplicates, reordering and a wrong last value
    /// are still failures.
    Conflated,
    /// WebTransport datagrams: unreliable and unordered by design; only
    /// the last value held is judged.
    Datagram,
}

impl Path {
    /// Its name in the JSON result.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lossless => "lossless",
            Self::Conflated => "conflated",
            Self::Datagram => "datagram",
        }
    }
}

/// The counts of one client (or, summed, of the run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Distinct live updates received.
    pub delivered: u64,
    /// Snapshots received.
    pub snapshots: u64,
    /// Updates owed while connected and never received.
    pub lost: u64,
    /// Updates missed while disconnected (or after the last delivery of a
    /// connection that then closed).
    pub gap: u64,
    /// Live updates received again.
    pub dup: u64,
    /// Live updates received after a later one.
    pub ooo: u64,
    /// Live updates of this vendor the run did not publish (a sequence it
    /// never published, or one sent before it began); an older run's value
    /// as a snapshot is the store's, counted in `snapshots` only.
    pub foreign: u64,
    /// Connections after the first.
    pub reconnects: u64,
}

impl Counts {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &Self) {
        self.delivered += o.delivered;
        self.snapshots += o.snapshots;
        self.lost += o.lost;
        self.gap += o.gap;
        self.dup += o.dup;
        self.ooo += o.ooo;
        self.foreign += o.foreign;
        self.reconnects += o.reconnects;
    }
}

/// One client's verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientVerdict {
    pub counts: Counts,
    /// Sequence of the last value received (live or snapshot), if any.
    pub held: Option<u64>,
    /// Last sequence published for the client's vendor, if any.
    pub last_published: Option<u64>,
    /// `held == last_published` (trivially true when nothing was published).
    pub converged: bool,
    /// Publish times (ns) of the first and last lost update.
    pub lost_span_ns: Option<(u64, u64)>,
    /// Publish times (ns) of the first and last update in a gap.
    pub gap_span_ns: Option<(u64, u64)>,
}

impl ClientVerdict {
    /// Whether this client breaks what `path` promises.
    pub fn fails(&self, path: Path) -> bool {
        let c = &self.counts;
        let broken = !self.converged || c.foreign > 0;
        match path {
            Path::Lossless => broken || c.lost > 0 || c.dup > 0 || c.ooo > 0,
            Path::Conflated => broken || c.dup > 0 || c.ooo > 0,
            Path::Datagram => broken,
        }
    }
}

/// One connection of a history.
struct Epoch {
    ack_ns: u64,
    /// Highest live sequence this connection received.
    max_live: Option<u64>,
    closed: bool,
}

/// Judges one client's `history` against `log` (its vendor's publish
/// times).
pub fn judge(history: &[Rec], log: &[u64]) -> ClientVerdict {
    let n = log.len();
    let mut seen = vec![false; n];
    let mut covered = vec![false; n];
    let mut c = Counts::default();
    let mut epochs: Vec<Epoch> = Vec::new();
    let mut max_live: Option<u64> = None;
    let mut held = None;
    for r in history {
        match *r {
            Rec::Ack(at) => {
                if !epochs.is_empty() {
                    c.reconnects += 1;
                }
                epochs.push(Epoch { ack_ns: at, max_live: None, closed: false });
            }
            Rec::Closed => {
                if let Some(e) = epochs.last_mut() {
                    e.closed = true;
                }
            }
            // A snapshot from before this run is the store's old value, not
            // a fault; a live one is.
            Rec::Old { snapshot: true } => {
                c.snapshots += 1;
                held = None;
            }
            Rec::Old { snapshot: false } => c.foreign += 1,
            Rec::Live(s) | Rec::Snapshot(s) => {
                let snapshot = matches!(r, Rec::Snapshot(_));
                let Some(idx) = usize::try_from(s).ok().filter(|s| *s < n) else {
                    c.foreign += 1;
                    continue;
                };
                held = Some(s);
                covered[idx] = true;
                if snapshot {
                    c.snapshots += 1;
                    continue;
                }
                if seen[idx] {
                    c.dup += 1;
                    continue;
                }
                seen[idx] = true;
                c.delivered += 1;
                if max_live.is_some_and(|m| s < m) {
                    c.ooo += 1;
                }
                max_live = Some(max_live.map_or(s, |m| m.max(s)));
                if let Some(e) = epochs.last_mut() {
                    e.max_live = Some(e.max_live.map_or(s, |m| m.max(s)));
                }
            }
        }
    }
    // Per connection, the sequences it owed while connected: from the first
    // published after its ack to its last delivery (or to the end, if open).
    let ranges: Vec<(usize, usize)> = epochs
        .iter()
        .filter_map(|e| {
            let from = log.partition_point(|t| *t <= e.ack_ns);
            let to = if e.closed { usize::try_from(e.max_live?).ok()? } else { n.checked_sub(1)? };
            (from <= to).then_some((from, to))
        })
        .collect();
    let owed_from = epochs.first().map_or(n, |e| log.partition_point(|t| *t <= e.ack_ns));
    let (mut lost_span, mut gap_span) = (None, None);
    let widen = |span: &mut Option<(u64, u64)>, t: u64| {
        *span = Some(span.map_or((t, t), |(a, b): (u64, u64)| (a.min(t), b.max(t))));
    };
    for s in owed_from..n {
        if covered[s] {
            continue;
        }
        if ranges.iter().any(|(a, b)| (*a..=*b).contains(&s)) {
            c.lost += 1;
            widen(&mut lost_span, log[s]);
        } else {
            c.gap += 1;
            widen(&mut gap_span, log[s]);
        }
    }
    let last_published = n.checked_sub(1).map(|s| s as u64);
    ClientVerdict {
        converged: held == last_published,
        counts: c,
        held,
        last_published,
        lost_span_ns: lost_span,
        gap_span_ns: gap_span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Rec::*;

    /// Updates 0..n published at 10, 20, 30, … ns.
    fn log(n: u64) -> Vec<u64> {
        (1..=n).map(|i| i * 10).collect()
    }

    fn run(h: &[Rec], n: u64) -> ClientVerdict {
        judge(h, &log(n))
    }

    #[test]
    fn a_clean_history_converges_with_nothing_missing() {
        let v = run(&[Ack(5), Live(0), Live(1), Live(2)], 3);
        assert_eq!(v.counts, Counts { delivered: 3, ..Counts::default() });
        assert!(v.converged && !v.fails(Path::Lossless));
    }

    #[test]
    fn updates_before_the_first_ack_are_not_owed() {
        // Acked at 25: updates 0 (10) and 1 (20) left before it.
        let v = run(&[Ack(25), Live(2), Live(3)], 4);
        assert_eq!((v.counts.lost, v.counts.gap, v.counts.delivered), (0, 0, 2));
        assert!(!v.fails(Path::Lossless));
    }

    #[test]
    fn a_hole_while_connected_is_lost_and_a_missing_tail_too() {
        let v = run(&[Ack(5), Live(0), Live(2), Live(3)], 5);
        assert_eq!(v.counts.lost, 2, "1 is a hole, 4 never came on an open connection");
        assert_eq!(v.lost_span_ns, Some((20, 50)));
        assert!(!v.converged && v.fails(Path::Lossless));
        assert!(v.fails(Path::Conflated), "not converged");
    }

    #[test]
    fn misses_across_a_reconnect_are_a_gap_and_the_snapshot_converges() {
        // Connected, got 0..=1, closed; 2 and 3 left while away; reconnected
        // at 45 (snapshot 3), then 4 and 5 live.
        let h = [Ack(5), Live(0), Live(1), Closed, Ack(45), Snapshot(3), Live(4), Live(5)];
        let v = run(&h, 6);
        assert_eq!(
            v.counts,
            Counts { delivered: 4, snapshots: 1, lost: 0, gap: 1, reconnects: 1, ..Counts::default() },
            "3 was covered by the snapshot, 2 is the gap"
        );
        assert_eq!(v.gap_span_ns, Some((30, 30)));
        assert!(v.converged && !v.fails(Path::Lossless));
    }

    #[test]
    fn duplicates_and_reordering_are_counted_once_each() {
        let v = run(&[Ack(5), Live(0), Live(2), Live(1), Live(2), Live(3)], 4);
        assert_eq!((v.counts.dup, v.counts.ooo, v.counts.lost, v.counts.delivered), (1, 1, 0, 4));
        assert!(v.converged);
        assert!(v.fails(Path::Lossless) && v.fails(Path::Conflated) && !v.fails(Path::Datagram));
    }

    #[test]
    fn conflation_may_lose_but_must_end_on_the_last_value() {
        let v = run(&[Ack(5), Live(0), Live(3), Live(5)], 6);
        assert_eq!(v.counts.lost, 3);
        assert!(v.fails(Path::Lossless) && !v.fails(Path::Conflated));
        let stale = run(&[Ack(5), Live(0), Live(5), Snapshot(2)], 6);
        assert!(!stale.converged && stale.fails(Path::Datagram), "an old snapshot after a fresher live one");
    }

    #[test]
    fn updates_of_another_run_are_foreign_unless_they_are_snapshots() {
        let h = [Ack(5), Old { snapshot: true }, Old { snapshot: false }, Live(9), Live(0)];
        let v = run(&h, 1);
        assert_eq!((v.counts.foreign, v.counts.snapshots, v.counts.delivered), (2, 1, 1));
        assert!(v.converged);
        assert!(v.fails(Path::Datagram), "foreign live updates always fail");
    }

    #[test]
    fn a_client_that_ends_disconnected_does_not_converge() {
        let v = run(&[Ack(5), Live(0), Closed], 2);
        assert_eq!((v.counts.gap, v.converged), (1, false));
        let nothing = run(&[Ack(5)], 0);
        assert!(nothing.converged && !nothing.fails(Path::Lossless));
    }
}
