//! Broker start-up and shutdown: one pinned glommio executor per shard, the
//! shard mesh between them, the cluster service on shard 0, and the phases
//! every shard passes together (recovered → in the cluster → serving →
//! drained → closed).
//!
//! Shutdown (SIGTERM/SIGINT): a controlled shutdown first (the controller
//! moves this broker's leaderships away while it still serves), then stop
//! accepting, let in-flight requests finish, write and fdatasync every
//! partition, write indexes and the offset checkpoints, exit 0 — or exit
//! non-zero, naming them, when some partition could not be closed cleanly.
//!
//! The data directory's lock (`.lock`) is held from start to exit, so no
//! second broker or `ringtail repair` works on the same directory.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

use crate::cluster::service::ClusterService;
use crate::config::Config;
use crate::shard::{placement, Job, Shard, MESH_CHANNEL_CAPACITY};

/// Memory each executor registers with io_uring for DMA buffers.
pub const IO_MEMORY_BYTES: usize = 8 * 1024 * 1024;
/// Longest wait for in-flight requests at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
const PHASE_POLL: Duration = Duration::from_millis(20);
/// Longest a starting broker waits to be in the cluster before it listens
/// anyway (the other voters may not be up yet).
pub const STARTUP_CLUSTER_WAIT: Duration = Duration::from_secs(30);
/// Pending connections per shard's listener (glommio's default too).
const LISTEN_BACKLOG: i32 = 1024;

/// Progress counters shared by all shards (atomics only; no locks).
#[derive(Default)]
struct Phases {
    /// A stop signal arrived.
    shutdown: AtomicBool,
    /// Shard 0 finished the controlled shutdown: every shard stops serving.
    stop: AtomicBool,
    /// Shard 0 saw this broker registered and unfenced (or gave up waiting).
    in_cluster: AtomicBool,
    /// A shard failed for good (the metadata log); the exit is an error.
    failed: AtomicBool,
    recovered: AtomicUsize,
    /// Shards listening so far; they start listening in executor order so
    /// that the kernel's reuseport group index is the executor's index.
    listening: AtomicUsize,
    drained: AtomicUsize,
    /// Shards whose partitions are closed (shard 0 then writes the offset
    /// checkpoints while the others still answer it).
    partitions_closed: AtomicUsize,
    closed: AtomicUsize,
}

async fn all_reach(counter: &AtomicUsize, count: usize) {
    counter.fetch_add(1, Ordering::SeqCst);
    while counter.load(Ordering::SeqCst) < count {
        glommio::timer::sleep(PHASE_POLL).await;
    }
}

/// Binds and listens on the shared port (SO_REUSEPORT) after the shards
/// before this one, so that socket `slot` of the group is executor `slot`'s,
/// pinned to the `slot`-th allowed CPU. The first shard then has the kernel
/// pick the listener of the CPU that took the connection's SYN (a classic
/// BPF program over the group, [`placement::steer_by_cpu`]): with the NIC's
/// receive-side scaling, or a loopback client's own CPU, connections spread
/// over the shards and each is served on the core already handling its
/// packets.
async fn listen_in_turn(
    listen: &str,
    phases: &Phases,
    slot: usize,
    count: usize,
    cpus: &[usize],
) -> Result<glommio::net::TcpListener> {
    let result = listen_socket(listen, phases, slot, count, cpus).await;
    if result.is_err() {
        // The other shards must not wait for this one: stop them all.
        phases.shutdown.store(true, Ordering::SeqCst);
        phases.stop.store(true, Ordering::SeqCst);
        phases.listening.fetch_add(1, Ordering::SeqCst);
    }
    result
}

async fn listen_socket(
    listen: &str,
    phases: &Phases,
    slot: usize,
    count: usize,
    cpus: &[usize],
) -> Result<glommio::net::TcpListener> {
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let addr: std::net::SocketAddr = listen.parse().context("listen address")?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("binding {listen}"))?;
    while phases.listening.load(Ordering::SeqCst) < slot {
        if phases.shutdown.load(Ordering::SeqCst) {
            anyhow::bail!("stopped before listening");
        }
        glommio::timer::sleep(PHASE_POLL).await;
    }
    socket.listen(LISTEN_BACKLOG)?;
    if slot == 0 && placement::steerable(count, cpus) {
        if let Err(e) = placement::steer_by_cpu(socket.as_raw_fd(), count, cpus) {
            tracing::warn!(error = %e, "connections spread by hash, not by CPU");
        }
    }
    phases.listening.fetch_add(1, Ordering::SeqCst);
    // SAFETY: the descriptor is a bound, listening TCP socket owned by no one else.
    Ok(unsafe { glommio::net::TcpListener::from_raw_fd(socket.into_raw_fd()) })
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

/// Has allocations of MALLOC_MMAP_THRESHOLD_BYTES or more map their own
/// memory, so that freeing them gives it back to the system (config.rs).
fn return_large_frees_to_the_system() {
    #[cfg(target_env = "gnu")]
    {
        let threshold = crate::config::MALLOC_MMAP_THRESHOLD_BYTES as libc::c_int;
        // SAFETY: mallopt only sets an allocator parameter; called before
        // any shard thread starts.
        if unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) } != 1 {
            tracing::warn!("could not set the allocator's mmap threshold");
        }
    }
}

pub fn run(config: Config) -> Result<()> {
    raise_memlock();
    return_large_frees_to_the_system();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    crate::tune::log_host_warnings(&config);
    let _lock = crate::log::lock::DataDirLock::acquire(&config.data_dir)?;
    crate::cluster::bootstrap::check_meta_properties(&config)?;
    let cluster = crate::cluster::bootstrap::cluster_config(&config)?;
    let count = config.shard_count();
    let phases = Arc::new(Phases::default());
    install_signal_handler(phases.clone())?;
    let lag_monitor = crate::lag::monitor::start(&config).context("starting the lag monitor")?;
    let mesh = MeshBuilder::<Job, _>::full(count, MESH_CHANNEL_CAPACITY);
    let mut http = crate::http::bind(config.http_listen_addr())
        .with_context(|| format!("binding http_listen {}", config.http_listen))?;
    let cpus = Arc::new(placement::allowed_cpus());
    tracing::debug!(?cpus, shards = count, "allowed CPUs");
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let (config, cluster, mesh, phases, cpus) = (
            config.clone(),
            cluster.clone(),
            mesh.clone(),
            phases.clone(),
            cpus.clone(),
        );
        let http = if i == 0 {
            http.take().map(|l| (l, lag_monitor.clone()))
        } else {
            None
        };
        let cpu = placement::cpu_of_shard(i, &cpus);
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{i}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                shard_main(config, cluster, mesh, phases, (i, count, cpus), http).await
            })
            .map_err(|e| anyhow::anyhow!("starting shard {i}: {e}"))?;
        handles.push(handle);
    }
    let mut failed = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failed.push(format!("{e:#}")),
            Err(e) => failed.push(format!("shard executor failed: {e}")),
        }
    }
    if let Some(m) = &lag_monitor {
        m.stop();
    }
    if failed.is_empty() {
        tracing::info!("stopped cleanly");
        Ok(())
    } else {
        Err(anyhow::anyhow!(failed.join("; ")))
    }
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
    cluster: crate::cluster::service::ClusterConfig,
    mesh: MeshBuilder<Job, glommio::channels::channel_mesh::Full>,
    phases: Arc<Phases>,
    (slot, count, cpus): (usize, usize, Arc<Vec<usize>>),
    http: Option<(
        std::net::TcpListener,
        Option<Arc<crate::lag::monitor::LagMonitor>>,
    )>,
) -> Result<()> {
    let (senders, receivers) = mesh
        .join()
        .await
        .map_err(|_| anyhow::anyhow!("joining the shard mesh"))?;
    let id = senders.peer_id();
    let shard = Shard::new(id, count, Rc::new(config), cluster.incarnation_id, senders);
    shard.start_mesh_receivers(receivers);
    if let Some((listener, lag)) = http {
        start_http(&shard, listener, lag, &phases, count);
    }
    crate::log::probe_device(&shard.config.data_dir).await?;
    crate::protocol::groups::start_group_timer(&shard);
    shard.start_flusher();
    shard.start_disk_watcher();
    shard.start_replica_ticker();
    shard.start_retention();
    shard.start_cleaner();
    all_reach(&phases.recovered, count).await;
    if id == 0 {
        shard.start_checkpointer();
        let service = start_cluster(&shard, cluster).await;
        match service {
            Ok(service) => {
                shard.set_cluster(service.clone());
                wait_in_cluster(&shard, &service, &phases).await;
            }
            Err(e) => {
                phases.failed.store(true, Ordering::SeqCst);
                phases.shutdown.store(true, Ordering::SeqCst);
                phases.stop.store(true, Ordering::SeqCst);
                phases.in_cluster.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
    }
    while !phases.in_cluster.load(Ordering::SeqCst) {
        glommio::timer::sleep(PHASE_POLL).await;
    }
    let listener = listen_in_turn(&shard.config.listen, &phases, slot, count, &cpus).await?;
    if id == 0 {
        tracing::info!(listen = %shard.config.listen, node = shard.node_id, shards = count, data_dir = %shard.config.data_dir.display(), batch_cache_bytes_per_shard = shard.config.batch_cache_bytes_per_shard(count), "ringtail serving");
    }
    let watcher = {
        let (shard, phases) = (shard.clone(), phases.clone());
        glommio::spawn_local(async move { watch_shutdown(&shard, &phases).await })
    };
    crate::net::accept_loop(shard.clone(), listener).await;
    watcher.await;
    let start = Instant::now();
    while shard.in_flight.get() > 0 && start.elapsed() < DRAIN_TIMEOUT {
        glommio::timer::sleep(PHASE_POLL).await;
    }
    all_reach(&phases.drained, count).await;
    let unclean = shard.close_partitions().await;
    all_reach(&phases.partitions_closed, count).await;
    if id == 0 {
        if let Err(e) = shard.write_checkpoints().await {
            tracing::error!(error = %e, "writing the offset checkpoints at shutdown; the next start scans more");
        }
    }
    all_reach(&phases.closed, count).await;
    if id == 0 && phases.failed.load(Ordering::SeqCst) {
        if let Some(e) = shard.cluster().fatal_error() {
            return Err(anyhow::anyhow!(e));
        }
    }
    if unclean.is_empty() {
        Ok(())
    } else {
        Err(anyhow::anyhow!(
            "partitions not closed cleanly: {}",
            unclean.join(", ")
        ))
    }
}

/// Shard 0: serves metrics and health over HTTP from the start, so that
/// `/readyz` answers 503 during recovery.
fn start_http(
    shard: &Rc<Shard>,
    listener: std::net::TcpListener,
    lag: Option<Arc<crate::lag::monitor::LagMonitor>>,
    phases: &Arc<Phases>,
    count: usize,
) {
    let ready: crate::http::Readiness = {
        let (shard, phases) = (shard.clone(), phases.clone());
        Rc::new(move || readiness(&shard, &phases, count))
    };
    let stop = {
        let phases = phases.clone();
        Rc::new(move || phases.stop.load(Ordering::SeqCst))
    };
    crate::http::start(listener, crate::http::routes(shard, ready, lag), stop);
}

/// Ready: recovered on every shard, registered and unfenced, every shard
/// accepting clients, not stopping.
fn readiness(shard: &Shard, phases: &Phases, count: usize) -> Result<(), String> {
    if phases.shutdown.load(Ordering::SeqCst) {
        return Err("shutting down".into());
    }
    if phases.recovered.load(Ordering::SeqCst) < count {
        return Err("recovering".into());
    }
    let Some(cluster) = shard.cluster_if_started() else {
        return Err("joining the cluster".into());
    };
    if !cluster.is_serving() {
        return Err("not registered with the controller, or fenced".into());
    }
    if phases.listening.load(Ordering::SeqCst) < count {
        return Err("not accepting clients yet".into());
    }
    Ok(())
}

/// Shard 0: starts this node's cluster service; each new image goes to
/// every shard, in order.
async fn start_cluster(
    shard: &Rc<Shard>,
    cluster: crate::cluster::service::ClusterConfig,
) -> Result<Rc<ClusterService>> {
    let publisher = shard.clone();
    let publish: crate::cluster::service::Publish = Rc::new(move |image, changes| {
        let shard = publisher.clone();
        Box::pin(async move {
            let pushes = (0..shard.count).map(|s| {
                let (image, changes) = (image.clone(), changes.clone());
                shard.invoke_on(s, move |target: Rc<Shard>| async move {
                    if let Err(e) = target.apply_image(image, changes).await {
                        tracing::error!(shard = target.id, error = %e, "some partitions could not be opened");
                    }
                })
            });
            futures::future::join_all(pushes).await;
        })
    });
    ClusterService::start(cluster, publish).await
}

/// Shard 0: waits until this broker is registered and unfenced and its
/// shards have its roles, then lets every shard listen (or gives up after
/// `STARTUP_CLUSTER_WAIT` and listens anyway: clients retry).
async fn wait_in_cluster(shard: &Rc<Shard>, service: &Rc<ClusterService>, phases: &Phases) {
    let start = Instant::now();
    let mut announced = false;
    loop {
        let image = shard.image();
        let me = image
            .broker(shard.node_id)
            .is_some_and(|b| b.registration.incarnation_id == shard.incarnation_id && !b.fenced);
        if me {
            if let Some(id) = &image.cluster_id {
                if let Err(e) = crate::cluster::bootstrap::write_meta_properties(
                    &shard.config.data_dir,
                    shard.node_id,
                    id,
                ) {
                    tracing::error!(error = %e, "writing meta.properties");
                }
            }
            break;
        }
        if service.fatal_error().is_some() || phases.shutdown.load(Ordering::SeqCst) {
            break;
        }
        if !announced && start.elapsed() > Duration::from_secs(2) {
            tracing::info!("waiting for the controller quorum and this broker's registration");
            announced = true;
        }
        if start.elapsed() > STARTUP_CLUSTER_WAIT {
            tracing::warn!("not in the cluster yet; serving anyway");
            break;
        }
        glommio::timer::sleep(PHASE_POLL).await;
    }
    phases.in_cluster.store(true, Ordering::SeqCst);
}

/// Waits for a stop: shard 0 runs the controlled shutdown first and then
/// lets every shard stop; a failed metadata log stops the node too.
async fn watch_shutdown(shard: &Rc<Shard>, phases: &Phases) {
    loop {
        if shard.id == 0 {
            let fatal = shard.cluster().fatal_error().is_some();
            if fatal {
                phases.failed.store(true, Ordering::SeqCst);
                phases.stop.store(true, Ordering::SeqCst);
            } else if phases.shutdown.load(Ordering::SeqCst) {
                let timeout = Duration::from_millis(shard.config.controlled_shutdown_timeout_ms);
                let moved = shard.cluster().controlled_shutdown(timeout).await;
                if !moved {
                    tracing::warn!("controlled shutdown timed out; stopping anyway");
                }
                phases.stop.store(true, Ordering::SeqCst);
            }
        }
        if phases.stop.load(Ordering::SeqCst) {
            break;
        }
        glommio::timer::sleep(PHASE_POLL).await;
    }
    shard.shutting_down.set(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn listener(port: u16) -> socket2::Socket {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(16).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    fn accepted(s: &socket2::Socket) -> usize {
        std::iter::from_fn(|| s.accept().ok()).count()
    }

    #[test]
    fn connections_go_to_the_listener_of_the_shard_on_the_connecting_cpu() {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        assert!(
            cores.len() >= 2,
            "needs two CPUs to tell the listeners apart"
        );
        // Shards on the allowed CPUs in reverse order, so that the map is
        // not the identity (as under `taskset -c 1,0`-like masks).
        let allowed = [cores[1].id, cores[0].id];
        let first = listener(0);
        let port = first.local_addr().unwrap().as_socket().unwrap().port();
        let second = listener(port);
        placement::steer_by_cpu(first.as_raw_fd(), 2, &allowed).unwrap();
        let connect_from = |cpu: usize| {
            let core = cores[cpu];
            std::thread::spawn(move || {
                assert!(core_affinity::set_for_current(core));
                std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()
            })
            .join()
            .unwrap()
        };
        let from = [0, 1, 1, 0, 1];
        let _held: Vec<_> = from.into_iter().map(connect_from).collect();
        std::thread::sleep(Duration::from_millis(50));
        // Listener 0 is the shard on cores[1], listener 1 the one on cores[0].
        let expected = (3, 2);
        assert_eq!((accepted(&first), accepted(&second)), expected);
    }
}
