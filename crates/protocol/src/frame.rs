//! WebTransport stream framing (docs/protocol.md): each frame is a 4-byte
//! big-endian length, then that many bytes holding one MessagePack value.
//!
//! Pure: bytes in, frames out. QUIC streams do not keep message boundaries,
//! so the reader accumulates whatever the stream delivers and cuts frames;
//! it refuses a frame announcing more than the limit as soon as its header
//! is seen, so memory stays bounded whatever a client sends.

use bytes::{Buf, Bytes, BytesMut};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

/// A stream that can no longer be read in step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces more than `WS_MAX_MESSAGE_BYTES`.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated {
        /// Bytes of the unfinished frame (header included) that arrived.
        buffered: usize,
    },
}

/// Cuts a byte stream into frame payloads.
///
/// Usage: [`FrameReader::push`] what the stream delivered, then call
/// [`FrameReader::next_frame`] until it returns `Ok(None)` before pushing
/// again. The buffer then never holds more than one unfinished frame
/// (≤ `HEADER_LEN + max`) plus the last pushed chunk.
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max: usize,
    failed: Option<FrameError>,
}

impl FrameReader {
    /// A reader refusing payloads over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { buf: BytesMut::new(), max, failed: None }
    }

    /// Appends bytes read from the stream. Ignored once the reader failed:
    /// the stream is out of step and nothing after the error is meaningful.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// The next whole payload, `Ok(None)` if more bytes are needed, or the
    /// error that ends the stream (returned again on every later call).
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let Some(header) = self.buf.get(..HEADER_LEN) else { return Ok(None) };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if len_usize > self.max {
            let e = FrameError::TooLarge { len: u64::from(len), max: self.max };
            self.failed = Some(e.clone());
            self.buf = BytesMut::new();
            return Err(e);
        }
        if self.buf.len() - HEADER_LEN < len_usize {
            // Reserve once for the whole frame instead of growing by chunks.
            self.buf.reserve(HEADER_LEN + len_usize - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER_LEN);
        let payload = self.buf.split_to(len_usize).freeze();
        if self.buf.is_empty() {
            // Give back the allocation: an idle client holds no buffer.
            self.buf = BytesMut::new();
        }
        Ok(Some(payload))
    }

    /// Called when the stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.buf.is_empty() => Ok(()),
            None => Err(FrameError::Truncated { buffered: self.buf.len() }),
        }
    }
}

/// Appends one frame (length prefix + payload) to `out`. Fails only for a
/// payload over `u32::MAX` bytes, which the gateway never produces.
pub fn write_frame(payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| FrameError::TooLarge { len: payload.len() as u64, max: u32::MAX as usize })?;
    out.reserve(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(payload, &mut out).unwrap_or_else(|e| panic!("{e}"));
        out
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let mut wire = frame(b"hello");
        wire.extend(frame(b""));
        wire.extend(frame(&[7u8; 300]));
        for chunk in [1, 2, 3, 5, 7, 64, wire.len()] {
            let mut r = FrameReader::new(4096);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                r.push(piece);
                while let Some(p) = r.next_frame().unwrap_or_else(|e| panic!("{e}")) {
                    got.push(p);
                }
            }
            assert_eq!(r.finish(), Ok(()));
            assert_eq!(got.len(), 3, "chunk {chunk}");
            assert_eq!(&got[0][..], b"hello");
            assert!(got[1].is_empty());
            assert_eq!(&got[2][..], &[7u8; 300][..]);
        }
    }

    #[test]
    fn exactly_the_limit_is_accepted_one_more_is_refused_at_the_header() {
        let mut r = FrameReader::new(10);
        r.push(&frame(&[1u8; 10]));
        assert_eq!(r.next_frame().map(|f| f.map(|b| b.len())), Ok(Some(10)));
        // Only the header of the oversized frame has arrived: refused already.
        r.push(&11u32.to_be_bytes());
        assert_eq!(r.next_frame(), Err(FrameError::TooLarge { len: 11, max: 10 }));
        r.push(&[0u8; 11]);
        assert_eq!(r.next_frame(), Err(FrameError::TooLarge { len: 11, max: 10 }), "stays failed");
        assert_eq!(r.buf.len(), 0, "nothing buffered after the error");
        let mut r = FrameReader::new(4096);
        r.push(&u32::MAX.to_be_bytes());
        assert!(matches!(r.next_frame(), Err(FrameError::TooLarge { len, .. }) if len == u64::from(u32::MAX)));
    }

    #[test]
    fn a_stream_ending_mid_frame_is_truncated() {
        let mut r = FrameReader::new(100);
        r.push(&[0, 0]);
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.finish(), Err(FrameError::Truncated { buffered: 2 }));
        let mut r = FrameReader::new(100);
        let wire = frame(b"abcdef");
        r.push(&wire[..7]);
        assert_eq!(r.next_frame(), Ok(None));
        assert_eq!(r.finish(), Err(FrameError::Truncated { buffered: 7 }));
    }

    #[test]
    fn the_buffer_stays_bounded_under_a_flood() {
        let max = 64;
        let mut r = FrameReader::new(max);
        let wire: Vec<u8> = (0..1000).flat_map(|i| frame(&vec![i as u8; i % (max + 1)])).collect();
        let mut frames = 0;
        for piece in wire.chunks(1024) {
            r.push(piece);
            while r.next_frame().unwrap_or_else(|e| panic!("{e}")).is_some() {
                frames += 1;
            }
            assert!(r.buf.len() < HEADER_LEN + max, "{} bytes buffered", r.buf.len());
        }
        assert_eq!(frames, 1000);
    }
}
