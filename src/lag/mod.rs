//! Consumer lag evaluation on Burrow's model: a pure evaluator (windows of
//! samples and the rules over them), the sampler that feeds it from any
//! Kafka-compatible cluster through the Kafka protocol, Burrow's HTTP JSON
//! (`/v3/kafka/local/consumer...`), the broker's lag monitor (a thread of
//! its own, a Kafka client of its own cluster as Burrow is), and the
//! `ringtail groups lag` command.

pub mod cli;
pub mod evaluator;
pub mod http;
pub mod monitor;
pub mod sampler;

pub use evaluator::{GroupStatus, LagError, LagEvaluator, Observation, Owner, Status};
pub use monitor::LagMonitor;

/// The cluster name in Burrow's paths and JSON: a broker watches its own.
pub const CLUSTER_NAME: &str = "local";
