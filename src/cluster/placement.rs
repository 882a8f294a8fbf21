//! Replica placement and leader election: pure functions of the image.
//!
//! Placement stripes replicas over the active brokers like Kafka's
//! rack-unaware assignment: partition p's first replica is broker
//! `(start + p) % n`, the others follow at a shift that differs per round,
//! so leaders and followers both spread evenly. Election takes the first
//! replica (in assignment order) that is in the ISR and active: never an
//! out-of-sync replica (unclean election is off).

use super::image::PartitionImage;
use super::records::{NodeId, NO_LEADER};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// More replicas asked for than active brokers (INVALID_REPLICATION_FACTOR).
    NotEnoughBrokers {
        wanted: usize,
        active: usize,
    },
    InvalidReplicationFactor(i32),
}

/// Replica lists for `partitions` new partitions with `replication_factor`
/// replicas each over `brokers` (sorted, active). `start` rotates the first
/// leader so successive topics do not all start on the same broker.
pub fn place(
    brokers: &[NodeId],
    partitions: i32,
    replication_factor: i32,
    start: usize,
) -> Result<Vec<Vec<NodeId>>, PlacementError> {
    let n = brokers.len();
    if replication_factor < 1 {
        return Err(PlacementError::InvalidReplicationFactor(replication_factor));
    }
    let rf = replication_factor as usize;
    if rf > n {
        return Err(PlacementError::NotEnoughBrokers {
            wanted: rf,
            active: n,
        });
    }
    let mut out = Vec::with_capacity(partitions.max(0) as usize);
    let mut shift = start % n.max(1);
    for p in 0..partitions.max(0) as usize {
        let first = (start + p) % n;
        if p > 0 && p % n == 0 {
            shift += 1;
        }
        let mut replicas = vec![brokers[first]];
        for j in 0..rf - 1 {
            let index = (first + 1 + (shift + j) % (n - 1)) % n;
            replicas.push(brokers[index]);
        }
        out.push(replicas);
    }
    Ok(out)
}

/// The leader an election picks: the first replica in assignment order that
/// is in the ISR and active. `None` leaves the partition offline.
pub fn elect_leader(p: &PartitionImage, is_active: impl Fn(NodeId) -> bool) -> Option<NodeId> {
    p.replicas
        .iter()
        .copied()
        .find(|r| p.isr.contains(r) && is_active(*r))
}

/// The new leader and ISR after `gone` stopped being active (fenced or
/// shutting down): it leaves the ISR unless it is the last member (so the
/// partition can come back with it, unclean election being off), and a new
/// leader is elected if it led. `None`: nothing to change.
pub fn without_broker(
    p: &PartitionImage,
    gone: NodeId,
    is_active: impl Fn(NodeId) -> bool,
) -> Option<(Option<NodeId>, Option<Vec<NodeId>>)> {
    if !p.replicas.contains(&gone) {
        return None;
    }
    let isr: Vec<NodeId> = if p.isr.len() > 1 {
        p.isr.iter().copied().filter(|r| *r != gone).collect()
    } else {
        p.isr.clone()
    };
    let isr_change = (isr != p.isr).then(|| isr.clone());
    let leader_change = if p.leader == gone || p.leader == NO_LEADER {
        let trial = PartitionImage { isr, ..p.clone() };
        let leader = elect_leader(&trial, |r| r != gone && is_active(r)).unwrap_or(NO_LEADER);
        (leader != p.leader).then_some(leader)
    } else {
        None
    };
    if leader_change.is_none() && isr_change.is_none() {
        None
    } else {
        Some((leader_change, isr_change))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count_leaders(assignment: &[Vec<NodeId>], broker: NodeId) -> usize {
        assignment.iter().filter(|r| r[0] == broker).count()
    }

    #[test]
    fn placement_spreads_leaders_and_replicas() {
        let brokers = [1, 2, 3];
        let a = place(&brokers, 30, 3, 0).unwrap();
        for b in brokers {
            assert_eq!(count_leaders(&a, b), 10);
            assert_eq!(a.iter().filter(|r| r.contains(&b)).count(), 30);
        }
        for r in &a {
            let mut sorted = r.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "replicas are distinct: {r:?}");
        }
        let b = place(&brokers, 1, 2, 1).unwrap();
        assert_eq!(b[0][0], 2, "start rotates the first leader");
    }

    #[test]
    fn replication_factor_above_live_brokers_is_refused() {
        assert_eq!(
            place(&[1, 2], 1, 3, 0),
            Err(PlacementError::NotEnoughBrokers {
                wanted: 3,
                active: 2
            })
        );
        assert!(place(&[1], 3, 1, 0).unwrap().iter().all(|r| r == &[1]));
    }

    fn partition(replicas: &[NodeId], isr: &[NodeId], leader: NodeId) -> PartitionImage {
        PartitionImage {
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader,
            leader_epoch: 0,
            partition_epoch: 0,
        }
    }

    #[test]
    fn election_takes_the_first_active_in_sync_replica() {
        let p = partition(&[1, 2, 3], &[3, 2], 1);
        assert_eq!(elect_leader(&p, |_| true), Some(2));
        assert_eq!(elect_leader(&p, |r| r == 3), Some(3));
        assert_eq!(elect_leader(&p, |r| r == 1), None, "never unclean");
    }

    #[test]
    fn a_gone_leader_is_replaced_and_leaves_the_isr() {
        let p = partition(&[1, 2, 3], &[1, 2, 3], 1);
        assert_eq!(
            without_broker(&p, 1, |_| true),
            Some((Some(2), Some(vec![2, 3])))
        );
        let follower_gone = without_broker(&p, 3, |_| true);
        assert_eq!(follower_gone, Some((None, Some(vec![1, 2]))));
        let last = partition(&[1, 2], &[1], 1);
        assert_eq!(
            without_broker(&last, 1, |_| true),
            Some((Some(NO_LEADER), None)),
            "the last ISR member stays in the ISR; the partition goes offline"
        );
        assert_eq!(without_broker(&p, 9, |_| true), None);
    }
}
