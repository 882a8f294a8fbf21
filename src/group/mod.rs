//! Consumer groups: the classic group protocol's coordinator state machine,
//! the `__consumer_offsets` record formats, and the `ringtail groups` CLI.
//! The coordinator of a group is the shard owning its `__consumer_offsets`
//! partition; protocol/groups.rs routes requests there.

pub mod cli;
pub mod coordinator;
pub mod records;

pub use coordinator::{GroupConfig, GroupCoordinator};

/// Partition of `__consumer_offsets` holding `group_id`: Kafka's
/// `Utils.abs(groupId.hashCode()) % partitions` (Java string hash).
pub fn offsets_partition_for(group_id: &str, partitions: i32) -> i32 {
    let mut h: i32 = 0;
    for unit in group_id.encode_utf16() {
        h = h.wrapping_mul(31).wrapping_add(unit as i32);
    }
    (h & 0x7fff_ffff) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn partition_matches_java_hash() {
        // "my-group".hashCode() == -1906497762 in Java; abs-masked % 50 == 36.
        assert_eq!(super::offsets_partition_for("my-group", 50), 36);
        assert_eq!(super::offsets_partition_for("", 50), 0);
    }
}
