//! The controller quorum: the metadata log replicated by raft-rs among the
//! controller voters. `node` is the sans-I/O member, `storage` its durable
//! log, `driver` the thin shell that runs it on the controller shard.

pub mod driver;
pub mod node;
pub mod storage;

#[cfg(test)]
pub(crate) mod sim;

/// raft-rs logs through slog; its records go to `tracing` like ours.
pub fn raft_logger(node: crate::cluster::records::NodeId) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("node" => node))
}

struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let message = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}"),
            slog::Level::Info => tracing::info!(target: "raft", "{message}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{message}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{message}"),
        }
        Ok(())
    }
}

/// The metadata quorum as one node sees it (DescribeQuorum).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuorumStatus {
    pub leader: Option<crate::cluster::records::NodeId>,
    pub term: u64,
    pub high_watermark: u64,
    pub voters: Vec<VoterStatus>,
}

/// One voter as this node knows it (a follower knows only itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VoterStatus {
    pub node_id: crate::cluster::records::NodeId,
    /// -1: unknown here.
    pub log_end_offset: i64,
    pub caught_up: bool,
    pub recently_heard: bool,
    pub endpoint: Option<(String, u16)>,
}
