//! The batch cache: recent batches of a shard's partitions kept in memory
//! so that fetches of anything still cached need no device read, within one
//! byte budget per shard, evicted oldest first across its partitions.
//!
//! Owned by the shard (budget) and its partitions (caches), on one thread.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::{Rc, Weak};

use bytes::Bytes;

use crate::record::{RecordSet, RecordSetBuilder};

/// Bytes counted per cached batch besides the batch itself: its handle and
/// allocation header and its two queue entries, so that a cache of tiny
/// batches stays within its limit too.
pub const CACHE_ENTRY_OVERHEAD_BYTES: usize = 128;

/// A cached batch in the shard's eviction order: its partition's cache,
/// base offset and size.
type CachedEntry = (Weak<RefCell<BatchCache>>, i64, usize);

/// Bytes of recent batches cached by all partitions of one shard, evicted
/// oldest first across the shard's partitions, so a partition written long
/// ago does not keep its batches while a busy one loses its newest.
pub struct CacheBudget {
    pub(super) used: Cell<usize>,
    limit: usize,
    /// Every cached batch in insertion order: its partition's cache, base
    /// offset and size. A batch cleared or dropped with its partition stays
    /// counted until its entry comes up here.
    order: RefCell<VecDeque<CachedEntry>>,
}

impl CacheBudget {
    pub fn new(limit: usize) -> Rc<CacheBudget> {
        Rc::new(CacheBudget {
            used: Cell::new(0),
            limit,
            order: RefCell::new(VecDeque::new()),
        })
    }

    /// Bytes cached now (batches and their overhead).
    pub fn used_bytes(&self) -> usize {
        self.used.get()
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit
    }

    /// Accounts for a batch just cached, then evicts the shard's oldest
    /// batches while over the limit.
    pub(super) fn admit(&self, cache: &Rc<RefCell<BatchCache>>, base: i64, batch_len: usize) {
        let len = batch_len + CACHE_ENTRY_OVERHEAD_BYTES;
        self.used.set(self.used.get() + len);
        let mut order = self.order.borrow_mut();
        order.push_back((Rc::downgrade(cache), base, len));
        while self.used.get() > self.limit {
            let Some((victim, base, len)) = order.pop_front() else {
                break;
            };
            if let Some(victim) = victim.upgrade() {
                let mut victim = victim.borrow_mut();
                if victim.batches.front().is_some_and(|(b, _, _)| *b == base) {
                    victim.batches.pop_front();
                }
            }
            self.used.set(self.used.get() - len);
        }
    }
}

#[derive(Default)]
pub(super) struct BatchCache {
    pub(super) batches: VecDeque<(i64, i64, Bytes)>,
}

impl BatchCache {
    pub(super) fn clear(&mut self) {
        self.batches.clear();
    }

    /// Whole batches from the one holding `offset`, below `end`, at most
    /// `max` bytes, by reference; the first batch even above `max` if it is
    /// at most `first_max`.
    pub(super) fn read(
        &self,
        offset: i64,
        end: i64,
        max: usize,
        first_max: usize,
    ) -> Option<RecordSet> {
        let (front_base, _, _) = self.batches.front()?;
        if *front_base > offset {
            return None;
        }
        let start = self.batches.partition_point(|(_, last, _)| *last < offset);
        let mut out = RecordSetBuilder::default();
        for (base, _, b) in self.batches.iter().skip(start) {
            let limit = if out.is_empty() {
                max.max(first_max)
            } else {
                max
            };
            if *base >= end || out.len() + b.len() > limit {
                break;
            }
            out.push(b.clone());
        }
        Some(out.finish())
    }
}

impl BatchCache {
    /// Drops batches that end below `offset` (the cleaner rewrote them).
    pub(super) fn drop_below(&mut self, offset: i64) {
        while self
            .batches
            .front()
            .is_some_and(|(_, last, _)| *last < offset)
        {
            self.batches.pop_front();
        }
    }

    /// Drops batches at or past `offset` (the log was cut there).
    pub(super) fn truncate(&mut self, offset: i64) {
        while self
            .batches
            .back()
            .is_some_and(|(base, _, _)| *base >= offset)
        {
            self.batches.pop_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bases(c: &Rc<RefCell<BatchCache>>) -> Vec<i64> {
        c.borrow().batches.iter().map(|(b, _, _)| *b).collect()
    }

    #[test]
    fn cache_evicts_the_shards_oldest_batches_first() {
        let budget = CacheBudget::new(3 * (100 + CACHE_ENTRY_OVERHEAD_BYTES));
        let a = Rc::new(RefCell::new(BatchCache::default()));
        let b = Rc::new(RefCell::new(BatchCache::default()));
        let put = |c: &Rc<RefCell<BatchCache>>, base: i64| {
            c.borrow_mut()
                .batches
                .push_back((base, base, Bytes::from(vec![0u8; 100])));
            budget.admit(c, base, 100);
        };
        for base in 0..3 {
            put(&a, base);
        }
        put(&b, 0);
        assert_eq!((bases(&a), bases(&b)), (vec![1, 2], vec![0]));
        put(&b, 1);
        assert_eq!((bases(&a), bases(&b)), (vec![2], vec![0, 1]));
        a.borrow_mut().clear();
        put(&b, 2);
        assert_eq!(bases(&b), vec![0, 1, 2], "the cleared batch made the room");
        put(&b, 3);
        assert_eq!(bases(&b), vec![1, 2, 3], "b's oldest went first");
        assert_eq!(budget.used.get(), 3 * (100 + CACHE_ENTRY_OVERHEAD_BYTES));
        drop(b);
        put(&a, 10);
        put(&a, 11);
        assert_eq!(
            bases(&a),
            vec![10, 11],
            "a dropped cache's bytes count until evicted"
        );
        assert_eq!(budget.used.get(), 3 * (100 + CACHE_ENTRY_OVERHEAD_BYTES));
    }
}
