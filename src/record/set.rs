//! Record sets of fetch responses: whole batches kept as the shared buffers
//! they were cached or read into, small ones coalesced.

use bytes::{Bytes, BytesMut};

/// Batches smaller than this are copied together when a fetch response is
/// assembled, so a response of many small batches stays a few parts.
pub const COALESCE_BATCH_BYTES: usize = 16 * 1024;

/// Whole record batches for a fetch response, kept as the shared buffers
/// they were cached or read into: the response is written from them without
/// another copy.
#[derive(Debug, Clone, Default)]
pub struct RecordSet {
    parts: Vec<Bytes>,
    len: usize,
}

impl RecordSet {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The batches as one buffer (copies unless there is a single part).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len);
                for p in many {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

impl From<Bytes> for RecordSet {
    fn from(b: Bytes) -> RecordSet {
        let mut builder = RecordSetBuilder::default();
        builder.push(b);
        builder.finish()
    }
}

/// Collects batches into a [`RecordSet`]: large ones by reference, small
/// ones copied into a shared buffer.
#[derive(Debug, Default)]
pub struct RecordSetBuilder {
    parts: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

impl RecordSetBuilder {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a shared buffer, by reference unless it is small.
    pub fn push(&mut self, b: Bytes) {
        self.len += b.len();
        if b.len() < COALESCE_BATCH_BYTES {
            self.small.extend_from_slice(&b);
        } else if !b.is_empty() {
            self.flush_small();
            self.parts.push(b);
        }
    }

    /// Adds bytes from a buffer that is not kept (one copy).
    pub fn push_slice(&mut self, b: &[u8]) {
        if b.len() < COALESCE_BATCH_BYTES {
            self.small.extend_from_slice(b);
        } else {
            self.flush_small();
            self.parts.push(Bytes::copy_from_slice(b));
        }
        self.len += b.len();
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
    }

    pub fn finish(mut self) -> RecordSet {
        self.flush_small();
        RecordSet {
            parts: self.parts,
            len: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_sets_keep_large_parts_and_coalesce_small_ones() {
        let mut b = RecordSetBuilder::default();
        b.push(Bytes::from(vec![1u8; 10]));
        b.push(Bytes::from(vec![2u8; 20]));
        b.push(Bytes::from(vec![3u8; COALESCE_BATCH_BYTES]));
        b.push_slice(&[4u8; 5]);
        let set = b.finish();
        assert_eq!(set.len(), 35 + COALESCE_BATCH_BYTES);
        let lens: Vec<usize> = set.parts().iter().map(Bytes::len).collect();
        assert_eq!(lens, vec![30, COALESCE_BATCH_BYTES, 5]);
        let all = set.to_bytes();
        assert_eq!(&all[..10], &[1u8; 10]);
        assert_eq!(all[all.len() - 1], 4);
    }
}
