//! ringtail: a Kafka-wire-compatible streaming broker, thread-per-core on glommio.

pub mod bench;
pub mod client;
pub mod cluster;
pub mod config;
pub mod group;
pub mod http;
pub mod lag;
pub mod log;
pub mod metrics;
pub mod net;
pub mod partition;
pub mod producer_state;
pub mod protocol;
pub mod record;
pub mod repair;
pub mod replication;
pub mod server;
pub mod shard;
pub mod tune;
