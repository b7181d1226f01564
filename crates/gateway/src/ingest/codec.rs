//! The protobuf codec of `UpdateIngest`: prost's, except that a request
//! that does not decode is `INVALID_ARGUMENT` (the caller sent garbage), not
//! the `INTERNAL` tonic-prost reports, which reads as a gateway bug and
//! invites retries. Selected in `build.rs` with `codec_path`, the hook
//! tonic-prost-build offers for this.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// [`ProstCodec`] with decode failures mapped to `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct IngestCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for IngestCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for IngestCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = IngestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        IngestDecoder(ProstCodec::<T, U>::default().decoder())
    }
}

/// [`ProstDecoder`] whose errors are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct IngestDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for IngestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| Status::invalid_argument(format!("undecodable message: {}", s.message())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
