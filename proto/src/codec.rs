//! The gRPC codec of the generated service and client, and of methods
//! served by hand: prost's encoder, and a decoder that takes each message
//! as one contiguous slice first.
//!
//! prost decoding through tonic's `DecodeBuf` advances a `BytesMut` for
//! every field it reads; a batch of 600 VM samples has ~5,000 fields. The
//! message's bytes are split off the buffer (no copy when they arrive in
//! one piece) and decoded from a `&[u8]`, whose cursor is a pointer.

use std::marker::PhantomData;

use bytes::Buf;
use prost::{DecodeError, Message};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// What a codec's decoder makes of a message's bytes, taken as one slice.
/// Every prost message is read by [`decode_message`]; a server may read a
/// message in its own way instead (`tally_sources::billing::MetricsBatch`:
/// a batch decoded straight into columns). Errors are prost's.
pub trait FromWire: Sized + Send + 'static {
    fn from_wire(bytes: &[u8]) -> Result<Self, DecodeError>;
}

impl<U: Message + Default + 'static> FromWire for U {
    fn from_wire(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode_message(bytes)
    }
}

/// `application/grpc+proto`: responses `T` encoded by prost, requests `U`
/// read from one slice by [`FromWire`]. The generated service and client
/// use it for prost's messages.
#[derive(Debug, Clone)]
pub struct SliceCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for SliceCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for SliceCodec<T, U>
where
    T: Message + Send + 'static,
    U: FromWire,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder { _type: PhantomData }
    }
}

/// Reads `U` from the message's bytes as one slice.
#[derive(Debug, Clone)]
pub struct SliceDecoder<U> {
    _type: PhantomData<U>,
}

impl<U: FromWire> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_slice(&buf.copy_to_bytes(buf.remaining())).map(Some)
    }
}

/// One message from its bytes; a malformed one is the status prost's own
/// codec gives (`Internal` with prost's reason).
fn decode_slice<U: FromWire>(bytes: &[u8]) -> Result<U, Status> {
    U::from_wire(bytes).map_err(|e| Status::internal(e.to_string()))
}

/// `U` from its bytes, by prost. (`SendMetricsBatch` requests are read
/// into columns by their own [`FromWire`] on every server path, so no
/// generated method decodes one here.)
pub fn decode_message<U: Message + Default>(bytes: &[u8]) -> Result<U, DecodeError> {
    U::decode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::v1 as pb;

    /// The decoder's result equals prost's own decoding of the same bytes;
    /// a cut-off message is an `Internal` error with prost's reason. (The
    /// codec's wiring into tonic is covered by the gRPC tests of the
    /// billing source, which use real clients.)
    #[test]
    fn decodes_what_prost_decodes() {
        let request = pb::SendMetricsBatchRequest {
            vm_id: "vm-1".into(),
            customer_id: "c-1".into(),
            metrics: (0..3)
                .map(|i| pb::VmMetrics {
                    cpu_time_nanos: i * 1_000_000_007,
                    network_tx_bytes: -i,
                    ..Default::default()
                })
                .collect(),
        };
        let encoded = request.encode_to_vec();
        let got: pb::SendMetricsBatchRequest = decode_slice(&encoded).unwrap();
        assert_eq!(got, request);

        let cut = &encoded[..encoded.len() - 1];
        let err = decode_slice::<pb::SendMetricsBatchRequest>(cut).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
        assert_eq!(
            err.message(),
            pb::SendMetricsBatchRequest::decode(cut)
                .unwrap_err()
                .to_string()
        );
    }
}
