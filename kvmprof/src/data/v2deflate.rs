//! The compressed V2 encoding of a histogram (what interval logs carry, base64'd), written
//! as a zlib stream of stored (uncompressed) deflate blocks.
//!
//! Every reader of interval logs (hdrhistogram's, HdrHistogram Java's `HistogramLogReader`)
//! inflates the compressed form, and a stored block is valid deflate. Compressing costs
//! more than it saves here: a zlib compressor zeroes hundreds of KiB of tables for each
//! histogram (hdrhistogram's `V2DeflateSerializer` builds a new one each time; a reused one
//! is reset), which was the largest part of what `record` cost per interval in an emulated
//! guest (issue 20), while the V2 payload of an interval's histogram (a run-length,
//! variable-length encoding of its counts) is a few hundred bytes that deflate shrinks by
//! about a third.
use std::{fmt, io::Write};

use hdrhistogram::{
    serialization::{Serializer, V2SerializeError, V2Serializer},
    Counter, Histogram,
};

/// The cookie of a V2 compressed histogram (hdrhistogram's `V2_COMPRESSED_COOKIE`, private
/// there).
const COOKIE: u32 = 0x1c84_9304 | 0x10;

/// zlib header: deflate with a 32 KiB window, no preset dictionary, "fastest" level (the
/// level is informative only); `0x7801` is a multiple of 31 as the format requires.
const ZLIB_HEADER: [u8; 2] = [0x78, 0x01];

/// Largest stored deflate block.
const STORED_MAX: usize = u16::MAX as usize;

/// Encodes histograms one after the other, reusing its buffers.
#[derive(Default)]
pub struct Encoder {
    v2: V2Serializer,
    plain: Vec<u8>,
    packed: Vec<u8>,
}

#[derive(Debug)]
pub enum EncodeError {
    V2(V2SerializeError),
    Io(std::io::Error),
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::V2(e) => write!(f, "{e}"),
            EncodeError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for EncodeError {}

impl Serializer for Encoder {
    type SerializeError = EncodeError;

    fn serialize<T: Counter, W: Write>(
        &mut self,
        h: &Histogram<T>,
        w: &mut W,
    ) -> Result<usize, EncodeError> {
        self.plain.clear();
        self.v2
            .serialize(h, &mut self.plain)
            .map_err(EncodeError::V2)?;
        let p = &mut self.packed;
        p.clear();
        p.extend_from_slice(&COOKIE.to_be_bytes());
        // The zlib stream's length, filled in below.
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&ZLIB_HEADER);
        let mut blocks = self.plain.chunks(STORED_MAX).peekable();
        if blocks.peek().is_none() {
            // An empty payload (cannot happen: V2 has a header) is one empty final block.
            p.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        }
        while let Some(block) = blocks.next() {
            // BFINAL on the last, BTYPE 00 (stored); then LEN and its complement, little-endian.
            p.push(u8::from(blocks.peek().is_none()));
            let len = block.len() as u16;
            p.extend_from_slice(&len.to_le_bytes());
            p.extend_from_slice(&(!len).to_le_bytes());
            p.extend_from_slice(block);
        }
        p.extend_from_slice(&adler2::adler32_slice(&self.plain).to_be_bytes());
        let len = u32::try_from(p.len() - 8).unwrap_or(u32::MAX);
        p[4..8].copy_from_slice(&len.to_be_bytes());
        w.write_all(p).map_err(EncodeError::Io)?;
        Ok(p.len())
    }
}

#[cfg(test)]
mod tests {
    use hdrhistogram::serialization::Deserializer;

    use super::*;

    #[test]
    fn hdrhistogram_decodes_what_it_encodes_small_and_large() {
        let mut enc = Encoder::default();
        // The last needs two stored blocks: ~12 000 buckets with 8-byte counts.
        for (n, step, each) in [
            (0u64, 1u64, 1),
            (1, 1, 1),
            (5000, 7919, 1),
            (400_000, 1, 1 << 50),
        ] {
            let mut h = Histogram::<u64>::new(3).expect("valid");
            for i in 0..n {
                h.record_n((i * step) % 10_000_000 + 1, each)
                    .expect("in range");
            }
            let mut blob = Vec::new();
            enc.serialize(&h, &mut blob).expect("encodes");
            if n == 400_000 {
                assert!(blob.len() > STORED_MAX, "{} bytes", blob.len());
            }
            let back: Histogram<u64> = Deserializer::new()
                .deserialize(&mut &blob[..])
                .expect("decodes");
            assert_eq!(back, h, "{n} values");
            assert_eq!(back.len(), h.len());
        }
    }
}
