//! `ringtail` command line: `serve` runs the broker, `bench` drives any
//! Kafka-compatible broker, `groups` inspects consumer groups, `repair`
//! salvages damaged partitions of a stopped broker, `tune` inspects and
//! tunes the host and runs A/B tuning experiments.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ringtail",
    version,
    about = "Kafka-wire-compatible streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Kafka-protocol load generator (works against any Kafka-compatible broker).
    Bench(ringtail::bench::BenchArgs),
    /// Inspect consumer groups: `groups list`, `groups describe GROUP`, `groups lag [GROUP]`.
    Groups(ringtail::group::cli::GroupsArgs),
    /// Salvage the intact batches of damaged partitions (broker stopped).
    Repair(ringtail::repair::RepairArgs),
    /// Host inspection, reversible tuning profiles, A/B tuning experiments.
    Tune(ringtail::tune::TuneArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to accept Kafka clients on.
    #[arg(long)]
    listen: Option<String>,
    /// Directory holding the partitions' logs and the broker's metadata.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of shards (one pinned executor per core); default all cores.
    #[arg(long)]
    cores: Option<usize>,
    /// Address given to clients in Metadata responses.
    #[arg(long)]
    advertise: Option<String>,
    /// This broker's node id (also its id among the controller voters).
    #[arg(long)]
    node_id: Option<i32>,
    /// Address for the controller quorum's traffic (Raft, broker-to-controller);
    /// by default this node's address in --controller-voters.
    #[arg(long)]
    controller_listen: Option<String>,
    /// The controller voters, Kafka's form: 1@HOST:PORT,2@HOST:PORT,3@HOST:PORT.
    /// Every voter is also a broker. Without it the node is a one-voter cluster.
    #[arg(long)]
    controller_voters: Option<String>,
    /// HTTP listener for Prometheus /metrics, /healthz and /readyz
    /// (default 0.0.0.0:9644); 0 disables it.
    #[arg(long)]
    http_listen: Option<String>,
    /// TOML configuration file; command line flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // glommio's reactor logs the deliberate failure of its polled-I/O
                // probe (see log::probe_device) at error level on every start.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new("info,glommio::reactor=off")
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let mut config = match &args.config {
                Some(path) => ringtail::config::Config::load(path)?,
                None => ringtail::config::Config::default(),
            };
            if let Some(v) = args.listen {
                config.listen = v;
            }
            if let Some(v) = args.data_dir {
                config.data_dir = v;
            }
            if let Some(v) = args.cores {
                config.cores = Some(v);
            }
            if let Some(v) = args.advertise {
                config.advertise = Some(v);
            }
            if let Some(v) = args.node_id {
                config.node_id = v;
            }
            if let Some(v) = args.controller_listen {
                config.controller_listen = Some(v);
            }
            if let Some(v) = args.http_listen {
                config.http_listen = v;
            }
            if let Some(v) = args.controller_voters {
                config.controller_voters = Some(v);
            }
            config.validate()?;
            ringtail::server::run(config)
        }
        Command::Bench(args) => ringtail::bench::run(args),
        Command::Groups(args) => ringtail::group::cli::run(args),
        Command::Repair(args) => ringtail::repair::run(args),
        Command::Tune(args) => ringtail::tune::run(args),
    }
}
