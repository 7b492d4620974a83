//! A direct decoder of `SendMetricsBatchRequest`, the one message whose
//! decoding shows in profiles (a batch of 600 samples has ~5,000 fields).
//!
//! It reads the encoding prost and every protobuf library write for this
//! message: fields by their one-byte keys, varints of at most ten bytes,
//! each sample's timestamp once. On anything else (an unknown or repeated
//! nested field, a key written in more bytes than it needs, a malformed
//! length, invalid UTF-8) it gives up and the caller decodes with prost, so
//! the result and every error stay prost's own.
//!
//! The decoder hands what it reads to a [`BatchSink`]: the server's sink
//! appends each sample to its columns as it is read
//! (`tally_sources::billing::MetricsBatch`); prost's message is a sink too.

use crate::billing::v1::{SendMetricsBatchRequest, VmMetrics};

/// What a batch's fields become as the decoder reads them. After the
/// decoder gave up (`None`) the sink holds a part of the message and is
/// thrown away.
pub trait BatchSink {
    /// The number of samples the message holds, before the first.
    fn reserve(&mut self, samples: usize);
    /// `vm_id`; a later occurrence replaces an earlier one.
    fn vm_id(&mut self, vm_id: &str);
    /// `customer_id`; a later occurrence replaces an earlier one.
    fn customer_id(&mut self, customer_id: &str);
    /// The next sample.
    fn sample(&mut self, sample: &VmMetrics);
}

impl BatchSink for SendMetricsBatchRequest {
    fn reserve(&mut self, samples: usize) {
        self.metrics.reserve(samples);
    }
    fn vm_id(&mut self, vm_id: &str) {
        vm_id.clone_into(&mut self.vm_id);
    }
    fn customer_id(&mut self, customer_id: &str) {
        customer_id.clone_into(&mut self.customer_id);
    }
    fn sample(&mut self, sample: &VmMetrics) {
        self.metrics.push(*sample);
    }
}

/// Decodes `bytes`, or `None` when prost has to (see the module).
pub fn send_metrics_batch(bytes: &[u8]) -> Option<SendMetricsBatchRequest> {
    let mut req = SendMetricsBatchRequest::default();
    send_metrics_batch_into(bytes, &mut req)?;
    Some(req)
}

/// Decodes `bytes` into `sink`; `None` when prost has to (see the module).
pub fn send_metrics_batch_into(bytes: &[u8], sink: &mut impl BatchSink) -> Option<()> {
    sink.reserve(samples(bytes)?);
    let mut r = Reader { buf: bytes, pos: 0 };
    while !r.done() {
        match r.byte()? {
            // (field << 3) | wire type 2: vm_id, customer_id (the last
            // occurrence wins, as for any scalar), a sample.
            0x0a => sink.vm_id(r.str()?),
            0x12 => sink.customer_id(r.str()?),
            0x1a => {
                let sample = r.len_delimited()?;
                sink.sample(&vm_metrics(sample)?);
            }
            _ => return None,
        }
    }
    Some(())
}

/// The number of samples (field 3) at the message's top level, read from
/// the keys and lengths alone.
fn samples(bytes: &[u8]) -> Option<usize> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut n = 0;
    while !r.done() {
        let key = r.byte()?;
        if !matches!(key, 0x0a | 0x12 | 0x1a) {
            return None;
        }
        r.len_delimited()?;
        n += usize::from(key == 0x1a);
    }
    Some(n)
}

fn vm_metrics(bytes: &[u8]) -> Option<VmMetrics> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut m = VmMetrics::default();
    while !r.done() {
        match r.byte()? {
            0x0a => {
                // A second timestamp would be merged into the first by
                // prost: rare enough to leave to it.
                if m.timestamp.is_some() {
                    return None;
                }
                m.timestamp = Some(timestamp(r.len_delimited()?)?);
            }
            // (field << 3) | wire type 0: the int64 counters, two's
            // complement as prost reads them.
            0x10 => m.cpu_time_nanos = r.varint()? as i64,
            0x18 => m.memory_usage_bytes = r.varint()? as i64,
            0x20 => m.disk_read_bytes = r.varint()? as i64,
            0x28 => m.disk_write_bytes = r.varint()? as i64,
            0x30 => m.network_rx_bytes = r.varint()? as i64,
            0x38 => m.network_tx_bytes = r.varint()? as i64,
            _ => return None,
        }
    }
    Some(m)
}

fn timestamp(bytes: &[u8]) -> Option<prost_types::Timestamp> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let mut t = prost_types::Timestamp::default();
    while !r.done() {
        match r.byte()? {
            0x08 => t.seconds = r.varint()? as i64,
            // int32: the low 32 bits of the varint, as prost keeps them.
            0x10 => t.nanos = r.varint()? as i32,
            _ => return None,
        }
    }
    Some(t)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    #[inline]
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    /// A varint of at most ten bytes whose tenth byte holds one bit (what
    /// prost accepts); `None` otherwise.
    #[inline(always)]
    fn varint(&mut self) -> Option<u64> {
        let rest = self.buf.get(self.pos..)?;
        let &first = rest.first()?;
        if first < 0x80 {
            self.pos += 1;
            return Some(u64::from(first));
        }
        // With ten bytes ahead (all but the message's last fields), read
        // them without a bound check each.
        let Some(ten) = rest.first_chunk::<10>() else {
            return self.varint_near_end();
        };
        let mut value = 0u64;
        for (i, &b) in ten.iter().enumerate() {
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == 9 && b > 1 {
                    return None;
                }
                self.pos += i + 1;
                return Some(value);
            }
        }
        None
    }

    /// [`Reader::varint`] byte by byte, within ten bytes of the end.
    fn varint_near_end(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return None;
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }

    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        let end = self.pos.checked_add(len)?;
        let bytes = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(bytes)
    }

    fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.len_delimited()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// xorshift: the same cases on every run.
    struct Rand(u64);
    impl Rand {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
        fn int(&mut self) -> i64 {
            match self.next(4) {
                0 => 0,
                1 => self.next(200) as i64 - 100,
                2 => self.next(u64::MAX) as i64,
                _ => (self.next(1 << 40)) as i64,
            }
        }
    }

    fn random_request(rand: &mut Rand) -> SendMetricsBatchRequest {
        SendMetricsBatchRequest {
            vm_id: ["", "vm-1", "vm-é", "vm-000123"][rand.next(4) as usize].into(),
            customer_id: ["", "c", "customer-42"][rand.next(3) as usize].into(),
            metrics: (0..rand.next(6))
                .map(|_| VmMetrics {
                    timestamp: (rand.next(5) != 0).then(|| prost_types::Timestamp {
                        seconds: rand.int(),
                        nanos: rand.int() as i32,
                    }),
                    cpu_time_nanos: rand.int(),
                    memory_usage_bytes: rand.int(),
                    disk_read_bytes: rand.int(),
                    disk_write_bytes: rand.int(),
                    network_rx_bytes: rand.int(),
                    network_tx_bytes: rand.int(),
                })
                .collect(),
        }
    }

    /// On every input the direct decoder either gives what prost gives
    /// (prost succeeding) or leaves the input to prost: encoded requests,
    /// then the same bytes with bytes flipped, cut, inserted or repeated,
    /// and bytes at random.
    #[test]
    fn agrees_with_prost_or_defers_to_it() {
        let mut rand = Rand(0x2545_f491_4f6c_dd1d);
        let (mut direct, mut deferred) = (0, 0);
        for case in 0..20_000 {
            let mut bytes = random_request(&mut rand).encode_to_vec();
            match case % 5 {
                0 => {}
                1 if !bytes.is_empty() => {
                    let i = rand.next(bytes.len() as u64) as usize;
                    bytes[i] ^= 1 << rand.next(8);
                }
                2 => bytes.truncate(rand.next(bytes.len() as u64 + 1) as usize),
                3 => {
                    let i = rand.next(bytes.len() as u64 + 1) as usize;
                    bytes.insert(i, rand.next(256) as u8);
                }
                4 => {
                    // The message twice: prost merges (fields repeated,
                    // samples appended).
                    let copy = bytes.clone();
                    bytes.extend(copy);
                }
                _ => bytes = (0..rand.next(40)).map(|_| rand.next(256) as u8).collect(),
            }
            let prost = SendMetricsBatchRequest::decode(&bytes[..]);
            match send_metrics_batch(&bytes) {
                Some(got) => {
                    assert_eq!(Ok(&got), prost.as_ref(), "case {case}: {bytes:?}");
                    direct += 1;
                }
                None => deferred += 1,
            }
        }
        // Unchanged and doubled encodings are all decoded directly.
        assert!(direct >= 8_000, "{direct} direct, {deferred} deferred");
        assert!(deferred > 0);
    }

    /// Varints read as prost reads them, whatever follows them (the
    /// ten-byte path and the byte-by-byte one near the end), and the
    /// encodings prost refuses refused.
    #[test]
    fn varints_are_prosts_near_the_end_and_away_from_it() {
        let mut values = vec![0u64, 1, 127, 128, 300, u64::MAX, u64::MAX - 1];
        for k in 1..64 {
            values.extend([(1u64 << k) - 1, 1u64 << k, (1u64 << k) + 1]);
        }
        for v in values {
            let mut bytes = Vec::new();
            prost::encoding::encode_varint(v, &mut bytes);
            for padding in 0..12 {
                let mut buf = bytes.clone();
                buf.extend(std::iter::repeat_n(0xff, padding));
                let mut r = Reader { buf: &buf, pos: 0 };
                assert_eq!(r.varint(), Some(v), "{v} with {padding} bytes after");
                assert_eq!(r.pos, bytes.len());
                let mut prost_buf = &buf[..];
                assert_eq!(prost::encoding::decode_varint(&mut prost_buf).ok(), Some(v));
            }
        }
        // A tenth byte over 1, an eleventh byte, and a cut-off varint.
        let bad: [&[u8]; 3] = [
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02],
            &[
                0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x81, 0x00,
            ],
            &[0x80, 0x80],
        ];
        for b in bad {
            for padding in [0, 12] {
                let mut buf = b.to_vec();
                if b.len() < 10 {
                    // Cut off: nothing may follow.
                    if padding > 0 {
                        continue;
                    }
                } else {
                    buf.extend(std::iter::repeat_n(0x00, padding));
                }
                assert_eq!(Reader { buf: &buf, pos: 0 }.varint(), None, "{buf:?}");
                assert!(
                    prost::encoding::decode_varint(&mut &buf[..]).is_err(),
                    "{buf:?}"
                );
            }
        }
    }

    #[test]
    fn unusual_encodings_are_left_to_prost() {
        let sample = VmMetrics {
            timestamp: Some(prost_types::Timestamp {
                seconds: 5,
                nanos: 6,
            }),
            ..Default::default()
        }
        .encode_to_vec();
        // An unknown field (15, varint).
        let mut unknown = vec![0x1a, sample.len() as u8 + 2];
        unknown.extend(&sample);
        unknown.extend([0x78, 0x01]);
        assert!(send_metrics_batch(&unknown).is_none());
        assert_eq!(
            SendMetricsBatchRequest::decode(&unknown[..])
                .unwrap()
                .metrics
                .len(),
            1
        );
        // Field 1 with its key in two bytes.
        assert!(send_metrics_batch(&[0x8a, 0x00, 0x01, b'v']).is_none());
        assert_eq!(
            SendMetricsBatchRequest::decode(&[0x8a, 0x00, 0x01, b'v'][..])
                .unwrap()
                .vm_id,
            "v"
        );
        // A varint of eleven bytes.
        let long = [
            0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        let mut bad = vec![0x1a, long.len() as u8];
        bad.extend(long);
        assert!(send_metrics_batch(&bad).is_none());
        assert!(SendMetricsBatchRequest::decode(&bad[..]).is_err());
    }
}
