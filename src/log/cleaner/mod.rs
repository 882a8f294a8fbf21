//! Log compaction (cleanup.policy=compact): the pure decisions (`plan`:
//! which log, which range, how segments group; `dedupe`: the offset map
//! and which records survive; `throttle`: the I/O budget) and the segment
//! I/O of a cleaning pass (`io`: reading sealed segments batch by batch,
//! writing a cleaned segment, swapping it into the log, finishing a swap
//! a crash interrupted).
//!
//! Runs on the partition's shard, driven by `partition/cleaner.rs` from the
//! shard's cleaner task; the partition owns the log and the pass's state.
//!
//! A cleaned group of segments is written as `<base>.log.cleaned` (and
//! `.index.cleaned`, `.timeindex.cleaned`), synced, renamed `.swap` (the
//! commit point: the directory is synced after it), then the old segments'
//! files are renamed `.deleted` (removed after file.delete.delay.ms, so a
//! fetch already reading them finishes) and the `.swap` files take their
//! final names. Offsets never change: a cleaned batch keeps its base and
//! last offset, so gaps are normal and a reader's position in offsets stays
//! valid; readers hold the old file until they are done with it.

pub mod dedupe;
pub mod io;
pub mod plan;
pub mod throttle;

pub use io::{recover_swaps, BatchReader, CleanedWriter};
