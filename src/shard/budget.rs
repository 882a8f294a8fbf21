//! Byte budgets and the frame buffer pool of one shard: the limits that keep
//! the broker's memory bounded whatever its clients do.
//!
//! Each shard owns its own budgets (its share of a broker-wide limit from
//! config.rs) and its own pool; both live on the shard's thread only (`Rc`,
//! `Cell`), so nothing here is locked or shared between threads. A [`Grant`]
//! is a claim on a budget, returned when dropped.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use bytes::BytesMut;
use futures::channel::oneshot;

/// A number of bytes that may be held at once by the tasks of one shard.
pub struct Budget {
    limit: usize,
    used: Cell<usize>,
    /// Tasks waiting for room, woken (all of them) on every release.
    waiters: RefCell<Vec<oneshot::Sender<()>>>,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("used", &self.used.get())
            .finish()
    }
}

impl Budget {
    pub fn new(limit: usize) -> Rc<Budget> {
        Rc::new(Budget {
            limit,
            used: Cell::new(0),
            waiters: RefCell::new(Vec::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.get()
    }

    /// Bytes that can still be taken without passing the limit.
    pub fn available(&self) -> usize {
        self.limit.saturating_sub(self.used.get())
    }

    /// A grant of nothing, to be grown.
    pub fn empty(self: &Rc<Self>) -> Grant {
        Grant {
            budget: self.clone(),
            bytes: 0,
        }
    }

    /// Takes up to `want` bytes now: what is left if less (possibly none).
    pub fn take_up_to(self: &Rc<Self>, want: usize) -> Grant {
        let bytes = want.min(self.available());
        self.used.set(self.used.get() + bytes);
        Grant {
            budget: self.clone(),
            bytes,
        }
    }

    /// Takes `bytes` now, past the limit if need be: for what is already
    /// bounded elsewhere and only has to be counted here.
    pub fn take_forced(self: &Rc<Self>, bytes: usize) -> Grant {
        self.used.set(self.used.get() + bytes);
        Grant {
            budget: self.clone(),
            bytes,
        }
    }

    /// Resolves once the budget is below its limit.
    pub async fn room(&self) {
        while self.available() == 0 {
            self.released().await;
        }
    }

    /// Resolves at the next release of any bytes.
    pub async fn released(&self) {
        let (tx, rx) = oneshot::channel();
        {
            let mut waiters = self.waiters.borrow_mut();
            if waiters.len() == waiters.capacity() {
                // Drop the senders of waits given up (timed out, closed),
                // so that the list stays within twice the live waiters.
                waiters.retain(|tx| !tx.is_canceled());
            }
            waiters.push(tx);
        }
        let _ = rx.await;
    }

    fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        self.used.set(self.used.get() - bytes);
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for tx in waiters {
            let _ = tx.send(());
        }
    }
}

/// Bytes held against a [`Budget`], given back when dropped.
pub struct Grant {
    budget: Rc<Budget>,
    bytes: usize,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Grant({} of {:?})", self.bytes, self.budget)
    }
}

impl Grant {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Grows the grant to at least `to` bytes, waiting while the budget is
    /// full. When no more than the missing bytes are left, the grant takes
    /// `whole` at once (past the limit), so that holders growing step by step
    /// towards a known size never wait on each other: only a budget already
    /// at its limit makes anyone wait, and the holder that took it past the
    /// limit needs nothing more to finish.
    pub async fn grow(&mut self, to: usize, whole: usize) {
        while !self.try_grow(to, whole) {
            self.budget.released().await;
        }
    }

    /// [`Grant::grow`] without waiting: false if the budget is full.
    pub fn try_grow(&mut self, to: usize, whole: usize) -> bool {
        if self.bytes >= to {
            return true;
        }
        let missing = to - self.bytes;
        let available = self.budget.available();
        let take = if available > missing {
            missing
        } else if available > 0 {
            whole.max(to) - self.bytes
        } else {
            return false;
        };
        self.budget.used.set(self.budget.used.get() + take);
        self.bytes += take;
        true
    }

    /// Sets the grant to `bytes`, past the limit if need be (for a size
    /// known only once the work is done, bounded elsewhere).
    pub fn set_forced(&mut self, bytes: usize) {
        if bytes >= self.bytes {
            self.budget
                .used
                .set(self.budget.used.get() + (bytes - self.bytes));
            self.bytes = bytes;
        } else {
            self.shrink_to(bytes);
        }
    }

    /// Gives back everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            let freed = self.bytes - bytes;
            self.bytes = bytes;
            self.budget.release(freed);
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

/// The buffer size classes: `m << e` for `m` in 4..=7, four per doubling,
/// so a buffer rounded up to its class wastes at most a quarter of it.
pub fn buffer_class_size(bytes: usize) -> usize {
    buffer_class(bytes).1
}

/// (class index, class size) of the smallest class holding `bytes`.
fn buffer_class(bytes: usize) -> (usize, usize) {
    let bytes = bytes.max(4);
    let exponent = (usize::BITS - 1 - bytes.leading_zeros()) as usize - 2;
    let mantissa = bytes.div_ceil(1 << exponent);
    let (mantissa, exponent) = if mantissa == 8 {
        (4, exponent + 1)
    } else {
        (mantissa, exponent)
    };
    (4 * exponent + mantissa - 4, mantissa << exponent)
}

/// Idle buffers of one shard kept for reuse, by size class
/// ([`buffer_class_size`]). Every buffer handed out or kept is fully
/// initialized (`len == capacity`), so reading into it needs no zeroing.
pub struct BufferPool {
    /// Bytes of idle buffers kept at most.
    limit: usize,
    /// Largest buffer kept.
    max_buffer: usize,
    pooled: Cell<usize>,
    /// Idle buffers by class index.
    classes: RefCell<Vec<Vec<BytesMut>>>,
}

impl BufferPool {
    pub fn new(limit: usize, max_buffer: usize) -> BufferPool {
        BufferPool {
            limit,
            max_buffer,
            pooled: Cell::new(0),
            classes: RefCell::new(Vec::new()),
        }
    }

    /// Bytes of idle buffers held now.
    pub fn pooled(&self) -> usize {
        self.pooled.get()
    }

    /// A buffer of exactly `capacity` bytes (a class size), `len ==
    /// capacity`: an idle one if the pool has it, else a new zeroed one.
    pub fn take(&self, capacity: usize) -> BytesMut {
        let (class, size) = buffer_class(capacity);
        debug_assert_eq!(size, capacity);
        let reused = self
            .classes
            .borrow_mut()
            .get_mut(class)
            .and_then(|c| c.pop());
        match reused {
            Some(buf) => {
                self.pooled.set(self.pooled.get() - buf.capacity());
                buf
            }
            None => BytesMut::zeroed(capacity),
        }
    }

    /// Keeps `buf` for reuse if it is one of ours (a class size), small
    /// enough and the pool has room; frees it otherwise.
    pub fn give(&self, mut buf: BytesMut) {
        let capacity = buf.capacity();
        let (class, size) = buffer_class(capacity);
        if size != capacity
            || capacity > self.max_buffer
            || self.pooled.get() + capacity > self.limit
        {
            return;
        }
        // Bytes past `len` were initialized when the buffer was made; this
        // zeroes them again rather than assuming so.
        buf.resize(capacity, 0);
        let mut classes = self.classes.borrow_mut();
        if classes.len() <= class {
            classes.resize_with(class + 1, Vec::new);
        }
        classes[class].push(buf);
        self.pooled.set(self.pooled.get() + capacity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { f().await })
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn take_up_to_gives_what_is_left_and_drop_gives_it_back() {
        let b = Budget::new(100);
        let g1 = b.take_up_to(70);
        let g2 = b.take_up_to(70);
        let g3 = b.take_up_to(70);
        assert_eq!((g1.bytes(), g2.bytes(), g3.bytes()), (70, 30, 0));
        assert_eq!(b.available(), 0);
        drop(g1);
        assert_eq!((b.used(), b.available()), (30, 70));
        drop((g2, g3));
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn shrink_and_forced_sizes_keep_the_count_exact() {
        let b = Budget::new(100);
        let mut g = b.take_up_to(80);
        g.shrink_to(10);
        assert_eq!(b.used(), 10);
        g.shrink_to(20); // never grows
        assert_eq!(g.bytes(), 10);
        g.set_forced(250);
        assert_eq!((b.used(), b.available()), (250, 0));
        let f = b.take_forced(5);
        assert_eq!(b.used(), 255);
        g.set_forced(40);
        drop(f);
        assert_eq!(b.used(), 40);
        drop(g);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn growth_takes_steps_then_the_whole_rest_when_little_is_left() {
        let b = Budget::new(100);
        let mut a = b.empty();
        assert!(a.try_grow(16, 64));
        assert!(a.try_grow(32, 64));
        assert_eq!(b.used(), 32);
        let mut c = b.empty();
        assert!(c.try_grow(32, 1000));
        assert_eq!(b.available(), 36);
        // 32 more for `a` would leave 4: fine. Then `c` finds 4 < 32 left
        // and takes its whole 1000 at once, past the limit.
        assert!(a.try_grow(64, 64));
        assert!(c.try_grow(64, 1000));
        assert_eq!((a.bytes(), c.bytes()), (64, 1000));
        assert_eq!(b.used(), 1064);
        // Over the limit: nobody else gets anything until bytes come back.
        let mut d = b.empty();
        assert!(!d.try_grow(1, 1));
        drop(c);
        assert!(d.try_grow(1, 1));
        assert_eq!(b.used(), 65);
    }

    #[test]
    fn holders_growing_together_never_wait_on_each_other() {
        // A step that would fill the budget exactly takes the whole size
        // instead: whenever the budget is full, one holder has all it needs.
        let b = Budget::new(96);
        let (mut x, mut y) = (b.empty(), b.empty());
        assert!(x.try_grow(48, 128));
        assert!(y.try_grow(48, 128));
        assert_eq!(y.bytes(), 128, "nothing would be left past the step");
        assert!(!x.try_grow(96, 128), "past the limit: x waits for y");
        drop(y);
        assert!(x.try_grow(96, 128));
        assert_eq!(x.bytes(), 128, "the step would fill it exactly");
    }

    #[test]
    fn waiters_wake_when_bytes_come_back() {
        run(|| async {
            let b = Budget::new(10);
            let held = Rc::new(RefCell::new(Some(b.take_up_to(10))));
            let releaser = {
                let held = held.clone();
                glommio::spawn_local(async move {
                    glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
                    held.borrow_mut().take();
                })
            };
            let mut g = b.empty();
            g.grow(4, 4).await;
            assert_eq!(g.bytes(), 4);
            releaser.await;
            b.room().await;
            assert_eq!(b.available(), 6);
        });
    }

    #[test]
    fn classes_are_four_per_doubling_and_waste_under_a_quarter() {
        let sizes: Vec<usize> = [1, 4, 7, 8, 9, 10, 11, 13, 15, 16, 17, 100, 4096, 4097]
            .iter()
            .map(|&n| buffer_class_size(n))
            .collect();
        assert_eq!(
            sizes,
            [4, 4, 7, 8, 10, 10, 12, 14, 16, 16, 20, 112, 4096, 5120]
        );
        let mut last = buffer_class(4);
        for n in 4..100_000usize {
            let (class, size) = buffer_class(n);
            assert!(size >= n && (size - n) * 4 < size.max(8), "{n} -> {size}");
            assert_eq!(
                buffer_class(size),
                (class, size),
                "a class size is its own class"
            );
            assert!(class >= last.0 && (class > last.0 || size == last.1));
            last = (class, size);
        }
    }

    #[test]
    fn pool_reuses_buffers_of_the_same_class_within_its_limit() {
        let pool = BufferPool::new(3 * 4096, 8192);
        let a = pool.take(4096);
        assert_eq!((a.len(), a.capacity()), (4096, 4096));
        let a_ptr = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.pooled(), 4096);
        let mut again = pool.take(4096);
        assert_eq!(again.as_ptr(), a_ptr, "the idle buffer is reused");
        assert_eq!(again.len(), 4096, "handed out fully initialized");
        assert_eq!(pool.pooled(), 0);
        again.truncate(10);
        pool.give(again);
        assert_eq!(pool.take(4096).len(), 4096);
        // Other classes, oversize and odd capacities are not mixed in.
        assert_eq!(pool.take(5120).capacity(), 5120);
        pool.give(BytesMut::zeroed(16384));
        pool.give(BytesMut::zeroed(4500));
        assert_eq!(pool.pooled(), 0);
        pool.give(BytesMut::zeroed(6144));
        assert_eq!(
            pool.take(7168).capacity(),
            7168,
            "no other class handed out"
        );
        assert_eq!(pool.take(6144).len(), 6144);
        for _ in 0..4 {
            pool.give(BytesMut::zeroed(4096));
        }
        assert_eq!(
            pool.pooled(),
            3 * 4096,
            "kept up to the limit, the rest freed"
        );
    }

    #[test]
    fn a_frozen_frame_comes_back_to_the_pool_once_unshared() {
        let pool = BufferPool::new(1 << 20, 1 << 20);
        let mut buf = pool.take(4096);
        buf.truncate(100);
        let frame = buf.freeze();
        let slice = frame.slice(10..20);
        let frame = frame
            .try_into_mut()
            .expect_err("a slice still refers to it");
        drop(slice);
        let back = frame.try_into_mut().expect("unshared");
        assert_eq!(back.capacity(), 4096);
        pool.give(back);
        assert_eq!(pool.pooled(), 4096);
    }
}
