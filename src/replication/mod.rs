//! Partition replication between brokers: per-shard follower fetch loops
//! (one per remote leader broker, batching every partition the shard follows
//! from it into one Fetch, like Kafka's ReplicaFetcherThread) and the
//! leader's side of follower fetches. The decisions (high watermark, ISR,
//! divergence) live in `partition::replica` and `partition::epochs`.

#[cfg(test)]
mod sim;

mod fetcher;

pub use fetcher::Fetcher;
