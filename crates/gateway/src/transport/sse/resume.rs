//! The SSE resume id (`id:` and `Last-Event-ID`), pure.
//!
//! EventSource keeps only the last `id:` it saw and sends it back on
//! reconnect, to whichever instance it reaches, so the id must carry the
//! whole state by itself: for each vendor of the stream that was delivered,
//! the timestamp of the last update the client saw. A reconnecting client
//! then gets a vendor's current value only when its timestamp differs from
//! the one it saw: changed vendors once, unchanged ones not at all. (A
//! JetStream sequence would be one number, but the embedded bus has none,
//! and live updates reach instances over core NATS without one.)
//!
//! Layout, then URL-safe base64 without padding: a version byte (1), two
//! bytes of a hash of the stream's vendor list (an id made for another list
//! is ignored, not misapplied), then per delivered vendor the index in the
//! list (varint) and the timestamp in Unix nanoseconds (zigzag varint; the
//! first absolute, the others as a difference to the first). A stream of
//! `n` vendors has an id of at most `3 + n * 20` bytes before base64
//! (usually ~6 per vendor). Anything that does not decode exactly is treated
//! as no id.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const VERSION: u8 = 1;

/// What a client of one stream has seen: per vendor of the stream's list,
/// the timestamp (Unix ns) of the last update delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    list: u16,
    stamps: Vec<Option<i64>>,
}

impl Seen {
    /// Nothing seen yet, for a stream over `ids`.
    pub fn new<S: AsRef<str>>(ids: &[S]) -> Self {
        Self { list: list_hash(ids), stamps: vec![None; ids.len()] }
    }

    /// The state a `Last-Event-ID` describes, for a stream over `ids`; `None`
    /// seen for garbage, an id too long, or one made for another list.
    pub fn resume<S: AsRef<str>>(ids: &[S], last_event_id: Option<&str>) -> Self {
        let fresh = Self::new(ids);
        match last_event_id.and_then(|id| fresh.decode(id)) {
            Some(seen) => seen,
            None => fresh,
        }
    }

    /// The last timestamp the client saw of vendor `i`.
    pub fn get(&self, i: usize) -> Option<i64> {
        self.stamps.get(i).copied().flatten()
    }

    /// Records that vendor `i`'s update of time `ts` was delivered.
    pub fn set(&mut self, i: usize, ts: i64) {
        if let Some(slot) = self.stamps.get_mut(i) {
            *slot = Some(ts);
        }
    }

    /// The id to send with the next event.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(3 + self.stamps.len() * 6);
        out.push(VERSION);
        out.extend_from_slice(&self.list.to_be_bytes());
        let mut base = None;
        for (i, ts) in self.stamps.iter().enumerate() {
            let Some(ts) = *ts else { continue };
            put_varint(&mut out, i as u64);
            let delta = match base {
                None => {
                    base = Some(ts);
                    ts
                }
                Some(b) => ts.wrapping_sub(b),
            };
            put_varint(&mut out, zigzag(delta));
        }
        URL_SAFE_NO_PAD.encode(out)
    }

    /// The longest id a stream over `n` vendors can produce, in characters.
    pub fn max_len(n: usize) -> usize {
        (3 + n * 20).div_ceil(3) * 4
    }

    fn decode(&self, id: &str) -> Option<Self> {
        if id.len() > Self::max_len(self.stamps.len()) {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(id.trim()).ok()?;
        let (head, mut rest) = bytes.split_at_checked(3)?;
        if head[0] != VERSION || u16::from_be_bytes([head[1], head[2]]) != self.list {
            return None;
        }
        let mut seen = Self { list: self.list, stamps: vec![None; self.stamps.len()] };
        let mut base = None;
        let mut last_index = None;
        while !rest.is_empty() {
            let i = usize::try_from(take_varint(&mut rest)?).ok()?;
            // Strictly increasing, as `encode` writes them: no repeats.
            if i >= seen.stamps.len() || last_index.is_some_and(|l| i <= l) {
                return None;
            }
            last_index = Some(i);
            let raw = unzigzag(take_varint(&mut rest)?);
            let ts = match base {
                None => {
                    base = Some(raw);
                    raw
                }
                Some(b) => b.wrapping_add(raw),
            };
            seen.stamps[i] = Some(ts);
        }
        Some(seen)
    }
}

/// FNV-1a over the list, folded to 16 bits: enough to tell lists apart,
/// short enough to cost nothing on every event.
fn list_hash<S: AsRef<str>>(ids: &[S]) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for id in ids {
        for b in id.as_ref().bytes().chain(std::iter::once(b',')) {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    ((h >> 16) ^ (h & 0xffff)) as u16
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let ids = ["v1", "v2", "v3"];
        let mut seen = Seen::new(&ids);
        seen.set(0, 1_764_590_000_123_456_789);
        seen.set(2, 1_764_589_000_000_000_000);
        let id = seen.encode();
        assert_eq!(Seen::resume(&ids, Some(&id)), seen);
        assert!(id.len() <= Seen::max_len(ids.len()));
        // Another list, garbage, truncation, an empty id: nothing seen.
        let fresh = Seen::new(&ids);
        assert_eq!(Seen::resume(&["v1", "v2"], Some(&id)), Seen::new(&["v1", "v2"]));
        for bad in ["", "!!", "zzzz", &id[..id.len() - 2], "AQAA____", &"A".repeat(10_000)] {
            assert_eq!(Seen::resume(&ids, Some(bad)), fresh, "{bad:?}");
        }
        assert_eq!(Seen::resume(&ids, None), fresh);
    }

    #[test]
    fn a_full_list_stays_within_its_bound() {
        let ids: Vec<String> = (0..100).map(|i| format!("vendor-{i}")).collect();
        let mut seen = Seen::new(&ids);
        for i in 0..100 {
            seen.set(i, if i % 2 == 0 { i64::MAX - i as i64 } else { i64::MIN + i as i64 });
        }
        let id = seen.encode();
        assert!(id.len() <= Seen::max_len(100), "{} > {}", id.len(), Seen::max_len(100));
        assert_eq!(Seen::resume(&ids, Some(&id)), seen);
    }
}
