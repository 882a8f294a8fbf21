//! Broker start-up and shutdown: one pinned glommio executor per shard, the
//! shard mesh between them, and the phases every shard passes together
//! (recovered → serving → drained → closed).
//!
//! Shutdown (SIGTERM/SIGINT): stop accepting, let in-flight requests finish,
//! write and fdatasync every partition, write indexes, exit 0.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use crate::cluster::TopicTable;
use crate::config::Config;
use crate::shard::{Job, Shard, MESH_CHANNEL_CAPACITY};

/// Memory each executor registers with io_uring for DMA buffers.
pub const IO_MEMORY_BYTES: usize = 8 * 1024 * 1024;
/// Longest wait for in-flight requests at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const PHASE_POLL: Duration = Duration::from_millis(20);

/// Progress counters shared by all shards (atomics only; no locks).
#[derive(Default)]
struct Phases {
    shutdown: AtomicBool,
    recovered: AtomicUsize,
    drained: AtomicUsize,
    closed: AtomicUsize,
}

async fn all_reach(counter: &AtomicUsize, count: usize) {
    counter.fetch_add(1, Ordering::SeqCst);
    while counter.load(Ordering::SeqCst) < count {
        glommio::timer::sleep(PHASE_POLL).await;
    }
}

/// Lets io_uring register DMA memory beyond a low `ulimit -l` when allowed.
pub fn raise_memlock() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; failure is harmless.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) };
    if rc != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; using the current limit");
    }
}

fn write_meta_properties(config: &Config) -> Result<()> {
    let path = config.data_dir.join("meta.properties");
    if !path.exists() {
        let text = format!(
            "version=1\nnode.id={}\ncluster.id={}\n",
            config.node_id, config.cluster_id
        );
        crate::cluster::write_atomically(&path, text.as_bytes())?;
    }
    Ok(())
}

pub fn run(config: Config) -> Result<()> {
    raise_memlock();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    write_meta_properties(&config)?;
    let mut table = TopicTable::load(&config.data_dir).context("loading topic table")?;
    ensure_offsets_topic(&mut table, &config)?;
    let count = config.shard_count();
    let phases = Arc::new(Phases::default());
    install_signal_handler(phases.clone())?;
    let mesh = MeshBuilder::<Job, _>::full(count, MESH_CHANNEL_CAPACITY);
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let (config, table, mesh, phases) =
            (config.clone(), table.clone(), mesh.clone(), phases.clone());
        let handle = LocalExecutorBuilder::new(Placement::Fixed(i % cpus))
            .name(&format!("shard-{i}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move { shard_main(config, table, mesh, phases, count).await })
            .map_err(|e| anyhow::anyhow!("starting shard {i}: {e}"))?;
        handles.push(handle);
    }
    let mut failed = None;
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(anyhow::anyhow!("shard executor failed: {e}")),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
    }
}

/// `__consumer_offsets` exists from the first start, so every shard can
/// rebuild its groups from it before serving.
fn ensure_offsets_topic(table: &mut TopicTable, config: &Config) -> Result<()> {
    use crate::cluster::{TopicMeta, CONSUMER_OFFSETS_TOPIC};
    if table.get(CONSUMER_OFFSETS_TOPIC).is_some() {
        return Ok(());
    }
    let configs = [("cleanup.policy".to_string(), "compact".to_string())]
        .into_iter()
        .collect();
    table.topics.insert(
        CONSUMER_OFFSETS_TOPIC.to_string(),
        TopicMeta {
            name: CONSUMER_OFFSETS_TOPIC.to_string(),
            id: uuid::Uuid::new_v4(),
            partitions: config.offsets_topic_partitions,
            configs,
            internal: true,
        },
    );
    table.save(&config.data_dir).context("saving topic table")?;
    Ok(())
}

fn install_signal_handler(phases: Arc<Phases>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "shutting down");
                phases.shutdown.store(true, Ordering::SeqCst);
            }
        })?;
    Ok(())
}

async fn shard_main(
    config: Config,
    table: TopicTable,
    mesh: MeshBuilder<Job, glommio::channels::channel_mesh::Full>,
    phases: Arc<Phases>,
    count: usize,
) -> Result<()> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| anyhow::anyhow!("joining the shard mesh"))?;
    let id = senders.peer_id();
    let shard = Shard::new(id, count, Rc::new(config), TopicTable::default(), senders);
    shard.start_mesh_receivers(receivers);
    crate::log::probe_device(&shard.config.data_dir).await?;
    shard
        .apply_table(table)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    crate::protocol::groups::load_groups(&shard)
        .await
        .map_err(|e| anyhow::anyhow!("loading consumer groups: {e}"))?;
    crate::protocol::groups::start_group_timer(&shard);
    shard.start_flusher();
    all_reach(&phases.recovered, count).await;
    let listener = glommio::net::TcpListener::bind(shard.config.listen.as_str())
        .map_err(|e| anyhow::anyhow!("binding {}: {e}", shard.config.listen))?;
    if id == 0 {
        tracing::info!(listen = %shard.config.listen, shards = count, data_dir = %shard.config.data_dir.display(), batch_cache_bytes_per_shard = shard.config.batch_cache_bytes_per_shard(count), "ringtail serving");
    }
    let watcher = {
        let (shard, phases) = (shard.clone(), phases.clone());
        glommio::spawn_local(async move {
            while !phases.shutdown.load(Ordering::SeqCst) {
                glommio::timer::sleep(PHASE_POLL).await;
            }
            shard.shutting_down.set(true);
        })
    };
    crate::net::accept_loop(shard.clone(), listener).await;
    watcher.await;
    let start = Instant::now();
    while shard.in_flight.get() > 0 && start.elapsed() < DRAIN_TIMEOUT {
        glommio::timer::sleep(PHASE_POLL).await;
    }
    all_reach(&phases.drained, count).await;
    shard.close_partitions().await;
    all_reach(&phases.closed, count).await;
    Ok(())
}
