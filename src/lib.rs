//! ringtail: a Kafka-wire-compatible streaming broker, thread-per-core on glommio.

pub mod bench;
pub mod config;
pub mod group;
pub mod server;
