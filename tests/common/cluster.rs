//! A cluster of separate role processes for fault-injection tests: N metadata
//! nodes (one raft group), M bookies and K gateways sharing one object store,
//! each a `strata <role>` child process on its own loopback port and data
//! directory, so that any of them can be killed with SIGKILL, paused with
//! SIGSTOP, resumed with SIGCONT and restarted where it was.
//!
//! Also what the fault tests share: librdkafka producers that record every
//! acknowledgement, a reader of whole partitions, and the checker that
//! compares the two.

use super::{stdout_lines, strata_bin};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use strata_metadata::client::MetadataClient;
use strata_proto::admin::{ClusterStatusRequest, ClusterStatusResponse};
use strata_proto::metadata::{ListPartitionsRequest, ListTopicsRequest, PartitionInfo};

/// How long a process may take to print its address.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a process may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of each log a failing test prints.
const LOG_TAIL_LINES: usize = 40;

/// Ports handed out by [`listen_port`] in this test process.
static PORTS_GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());

/// A loopback port for a process to listen on for the whole test, restarts
/// included. It lies below Linux's ephemeral range (32768-60999), so that no
/// client connection is given it as its local port while its process is
/// down, and it was free a moment ago.
pub fn listen_port() -> u16 {
    use rand::Rng;
    let mut given = PORTS_GIVEN.lock().unwrap();
    loop {
        let port = rand::rng().random_range(20_000..32_000);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
}

/// The kind of a cluster process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Metadata,
    Bookie,
    Gateway,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Metadata => "metadata",
            Role::Bookie => "bookie",
            Role::Gateway => "gateway",
        }
    }

    /// What the process prints, followed by its address, once it serves.
    fn ready_prefix(self) -> &'static str {
        match self {
            Role::Metadata => "metadata",
            Role::Bookie => "bookie",
            Role::Gateway => "kafka",
        }
    }
}

/// One role process on a fixed loopback port and data directory, which
/// survive kills and restarts.
pub struct Process {
    pub role: Role,
    pub id: u32,
    pub port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Process {
    fn new(role: Role, id: u32, port: u16, args: Vec<String>, dir: &Path) -> Self {
        Self {
            role,
            id,
            port,
            args,
            log: dir.join(format!("{}-{id}.log", role.name())),
            child: None,
            paused: false,
        }
    }

    /// `127.0.0.1:port`: the gRPC address of metadata nodes and bookies, the
    /// Kafka listener of gateways.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id while it runs (paused or not).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process exists and is not paused.
    pub fn is_up(&self) -> bool {
        self.child.is_some() && !self.paused
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Starts the process and waits until it prints its address.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name());
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file opens");
        let mut child = Command::new(strata_bin())
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("STRATA_TEST_RUST_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("strata starts");
        let lines_rx = stdout_lines(&mut child);
        let deadline = Instant::now() + READY_TIMEOUT;
        let prefix = self.role.ready_prefix();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = lines_rx.recv_timeout(left) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not print its address; log:\n{}",
                    self.name(),
                    self.log_tail(LOG_TAIL_LINES)
                );
            };
            if let Some(rest) = line.strip_prefix(prefix) {
                let printed = rest.trim().trim_start_matches("grpc://");
                assert_eq!(printed, self.addr(), "{} listens where asked", self.name());
                break;
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || while lines_rx.recv().is_ok() {});
        self.child = Some(child);
        self.paused = false;
    }

    /// Kills the process with SIGKILL (paused or not) and reaps it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("process is running");
        child.kill().expect("SIGKILL delivered");
        child.wait().expect("killed process is reaped");
        self.paused = false;
    }

    /// Stops the process with SIGTERM and checks that it exits cleanly
    /// within 30 s.
    pub fn stop(&mut self) {
        let status = self.stop_within(STOP_TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "{} exits cleanly within {STOP_TIMEOUT:?} of SIGTERM, got {status:?}; log:\n{}",
            self.name(),
            self.log_tail(LOG_TAIL_LINES)
        );
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit;
    /// `None` if it is still running then (it is left running).
    pub fn stop_within(&mut self, timeout: Duration) -> Option<ExitStatus> {
        assert!(!self.paused, "{} is paused", self.name());
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().expect("process is running");
        loop {
            if let Some(status) = child.try_wait().expect("child can be waited on") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freezes the process with SIGSTOP: its sockets stay open, nothing runs.
    /// Returns once every thread of the process is stopped.
    pub fn pause(&mut self) {
        assert!(!self.paused, "{} is already paused", self.name());
        self.signal(libc::SIGSTOP);
        self.paused = true;
        let pid = self.pid().expect("process is running");
        let stopped = super::eventually(Duration::from_secs(5), || {
            let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            threads.flatten().all(|thread| {
                // The state follows the parenthesised command name.
                std::fs::read_to_string(thread.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
                })
            })
        });
        assert!(stopped, "every thread of {} stops", self.name());
    }

    /// Lets a paused process go on with SIGCONT.
    pub fn resume(&mut self) {
        assert!(self.paused, "{} is not paused", self.name());
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// Kills the process if it runs, then starts it again on the same port
    /// and data directory.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
        self.start();
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = self.pid().expect("process is running");
        // SAFETY: kill(2) on the id of a child we have not reaped yet.
        let sent = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(sent, 0, "signal {signal} delivered to {}", self.name());
    }

    /// `gateway-2` and the like.
    pub fn name(&self) -> String {
        format!("{}-{}", self.role.name(), self.id)
    }

    /// Everything the process logged, over all its restarts.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The shape of a cluster and the settings of its roles.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub metadata_nodes: usize,
    pub bookies: usize,
    pub gateways: usize,
    /// `--lease-ms` of the metadata group: how soon a silent gateway or
    /// bookie counts as dead.
    pub lease_ms: u64,
    /// More flags for every metadata node.
    pub metadata_args: Vec<String>,
    /// More flags for every bookie.
    pub bookie_args: Vec<String>,
    /// More flags for every gateway.
    pub gateway_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            metadata_nodes: 1,
            bookies: 3,
            gateways: 2,
            lease_ms: 3000,
            metadata_args: vec![
                "--heartbeat-interval-ms".into(),
                "500".into(),
                "--controller-interval-ms".into(),
                "200".into(),
            ],
            bookie_args: Vec::new(),
            gateway_args: Vec::new(),
        }
    }
}

/// A running cluster of separate processes. Ids are 1-based, as the roles'
/// `--node-id`s.
pub struct Cluster {
    dir: PathBuf,
    pub metadata: Vec<Process>,
    pub bookies: Vec<Process>,
    pub gateways: Vec<Process>,
    runtime: tokio::runtime::Runtime,
    /// Held while the cluster lives: the tests of one binary run their
    /// clusters one at a time, since two would fight over two cores and make
    /// timing-bound checks (leases, failover) flaky.
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// Taken by every [`Cluster`] for its lifetime.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

impl Cluster {
    /// Starts every process in `dir` (metadata first, then bookies, then
    /// gateways) and waits until every bookie and gateway holds a lease.
    pub fn start(dir: &Path, options: ClusterOptions) -> Self {
        // A test that failed while holding it poisoned it; the next may go on.
        let one_at_a_time = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let metadata_ports: Vec<u16> = (0..options.metadata_nodes).map(|_| listen_port()).collect();
        let metadata_addrs: Vec<String> = metadata_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let peers: Vec<String> = metadata_addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{}={addr}", i + 1))
            .collect();
        let path = |name: String| dir.join(name).display().to_string();

        let metadata = metadata_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let id = i as u32 + 1;
                let mut args: Vec<String> = vec![
                    "metadata".into(),
                    "--node-id".into(),
                    id.to_string(),
                    "--listen-addr".into(),
                    format!("127.0.0.1:{port}"),
                    "--data-dir".into(),
                    path(format!("metadata-{id}")),
                    "--lease-ms".into(),
                    options.lease_ms.to_string(),
                ];
                if options.metadata_nodes > 1 {
                    args.extend(["--peers".into(), peers.join(",")]);
                }
                args.extend(options.metadata_args.iter().cloned());
                Process::new(Role::Metadata, id, *port, args, dir)
            })
            .collect();
        let bookies = (1..=options.bookies as u32)
            .map(|id| {
                let port = listen_port();
                let mut args: Vec<String> = vec![
                    "bookie".into(),
                    "--node-id".into(),
                    id.to_string(),
                    "--listen-addr".into(),
                    format!("127.0.0.1:{port}"),
                    "--data-dir".into(),
                    path(format!("bookie-{id}")),
                    "--metadata-addrs".into(),
                    metadata_addrs.join(","),
                ];
                args.extend(options.bookie_args.iter().cloned());
                Process::new(Role::Bookie, id, port, args, dir)
            })
            .collect();
        let gateways = (1..=options.gateways as u32)
            .map(|id| {
                let port = listen_port();
                let mut args: Vec<String> = vec![
                    "gateway".into(),
                    "--node-id".into(),
                    id.to_string(),
                    "--kafka-listen-addr".into(),
                    format!("127.0.0.1:{port}"),
                    "--metadata-addrs".into(),
                    metadata_addrs.join(","),
                    "--objects-dir".into(),
                    path("objects".into()),
                ];
                args.extend(options.gateway_args.iter().cloned());
                Process::new(Role::Gateway, id, port, args, dir)
            })
            .collect();
        let mut cluster = Cluster {
            dir: dir.to_path_buf(),
            metadata,
            bookies,
            gateways,
            runtime: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for metadata calls"),
            _one_at_a_time: one_at_a_time,
        };
        for process in cluster
            .metadata
            .iter_mut()
            .chain(cluster.bookies.iter_mut())
            .chain(cluster.gateways.iter_mut())
        {
            process.start();
        }
        cluster.wait_healthy(Duration::from_secs(60));
        cluster
    }

    /// The directory holding every process's data and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process of `role` with node id `id`.
    pub fn process(&mut self, role: Role, id: u32) -> &mut Process {
        let processes = match role {
            Role::Metadata => &mut self.metadata,
            Role::Bookie => &mut self.bookies,
            Role::Gateway => &mut self.gateways,
        };
        &mut processes[id as usize - 1]
    }

    pub fn gateway(&mut self, id: u32) -> &mut Process {
        self.process(Role::Gateway, id)
    }

    pub fn bookie(&mut self, id: u32) -> &mut Process {
        self.process(Role::Bookie, id)
    }

    /// Every metadata node's address, as given to the other roles.
    pub fn metadata_addrs(&self) -> Vec<String> {
        self.metadata.iter().map(Process::addr).collect()
    }

    /// Every gateway's Kafka address, comma-separated: bootstrap.servers.
    pub fn bootstrap(&self) -> String {
        let addrs: Vec<String> = self.gateways.iter().map(Process::addr).collect();
        addrs.join(",")
    }

    /// A client of every metadata node.
    pub fn client(&self) -> MetadataClient {
        self.client_of(&self.metadata_addrs(), Duration::from_secs(5))
    }

    /// A client of the metadata nodes at `addrs`, retrying for `retry_for`.
    pub fn client_of(&self, addrs: &[String], retry_for: Duration) -> MetadataClient {
        // Lazy channels spawn their connection task on the current runtime.
        let _runtime = self.runtime.enter();
        MetadataClient::connect_lazy(addrs)
            .expect("metadata addresses are valid")
            .with_retry_for(retry_for)
    }

    /// Runs a metadata call to completion.
    pub fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Runs `strata admin --metadata-addrs ALL ARGS...`.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        super::admin(&self.metadata_addrs().join(","), args)
    }

    /// Runs `strata admin ARGS...`, which must succeed, and returns its stdout.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        super::admin_ok(&self.metadata_addrs().join(","), args)
    }

    /// Creates `topic` with `partitions` partitions through `strata admin`.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        super::create_topic(&self.metadata_addrs().join(","), topic, partitions);
    }

    /// The cluster status as `client` answers it, or `None` if it does not.
    pub fn status_from(&self, client: &MetadataClient) -> Option<ClusterStatusResponse> {
        self.block_on(
            client
                .admin_call(|mut c| async move { c.cluster_status(ClusterStatusRequest {}).await }),
        )
        .ok()
    }

    /// The cluster status as any metadata node answers it.
    pub fn status(&self) -> Option<ClusterStatusResponse> {
        self.status_from(&self.client())
    }

    /// The raft leader every running metadata node names, itself running,
    /// waiting up to `timeout`.
    pub fn raft_leader(&self, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<u64>> = self
                .metadata
                .iter()
                .filter(|node| node.is_up())
                .map(|node| {
                    let client = self.client_of(&[node.addr()], Duration::from_secs(1));
                    self.status_from(&client).map(|s| s.raft_leader)
                })
                .collect();
            if let Some(Some(leader)) = leaders.first() {
                let running = self
                    .metadata
                    .iter()
                    .any(|node| node.is_up() && u64::from(node.id) == *leader);
                if running && leaders.iter().all(|l| *l == Some(*leader)) {
                    return *leader as u32;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until metadata node `id` has applied at least what the leader had
    /// applied when asked, so that another node may be stopped without leaving
    /// the group short of a caught-up majority.
    pub fn wait_metadata_caught_up(&self, id: u32, timeout: Duration) {
        let applied_of = |node: u32| {
            let addr = self
                .metadata
                .iter()
                .find(|p| p.id == node)
                .map(|p| p.addr())
                .expect("a metadata node of that id");
            let client = self.client_of(&[addr], Duration::from_secs(1));
            self.status_from(&client).map(|s| s.last_applied)
        };
        let leader = self.raft_leader(timeout);
        let target = applied_of(leader).expect("the leader answers");
        let caught_up = super::eventually(timeout, || applied_of(id).is_some_and(|a| a >= target));
        assert!(
            caught_up,
            "metadata-{id} applied {:?}, the leader {target}",
            applied_of(id)
        );
    }

    /// Every partition of `topic` by index, with its owner and leader epoch.
    pub fn partitions(&self, topic: &str) -> BTreeMap<u32, PartitionInfo> {
        let client = self.client();
        let request = ListPartitionsRequest {
            topic: topic.into(),
        };
        self.block_on(client.send(request, |mut c, request| async move {
            c.list_partitions(request).await
        }))
        .map(|reply| {
            reply
                .partitions
                .into_iter()
                .map(|p| (p.partition, p))
                .collect()
        })
        .unwrap_or_default()
    }

    /// The partitions of `topic` that gateway `id` owns, with their epochs.
    pub fn owned_by(&self, topic: &str, id: u32) -> BTreeMap<u32, u32> {
        self.partitions(topic)
            .into_values()
            .filter(|p| p.owner == id as i32)
            .map(|p| (p.partition, p.leader_epoch))
            .collect()
    }

    /// Why the cluster is not healthy yet, or `None` when it is: every
    /// running, unpaused bookie and gateway holds a lease, no other does, and
    /// every partition is owned by a gateway that is up.
    pub fn unhealthy(&self) -> Option<String> {
        let Some(status) = self.status() else {
            return Some("metadata does not answer".into());
        };
        let live = |expires: u64| expires > status.now_ms;
        for bookie in &self.bookies {
            let leased = status
                .bookies
                .iter()
                .any(|b| b.node_id == bookie.id as i32 && live(b.lease_expires_ms));
            if leased != bookie.is_up() {
                return Some(format!(
                    "{} up: {}, leased: {leased}",
                    bookie.name(),
                    bookie.is_up()
                ));
            }
        }
        for gateway in &self.gateways {
            let leased = status.gateways.iter().any(|g| {
                g.node_id == gateway.id as i32
                    && live(g.lease_expires_ms)
                    && g.kafka_port == u32::from(gateway.port)
            });
            if leased != gateway.is_up() {
                return Some(format!(
                    "{} up: {}, leased: {leased}",
                    gateway.name(),
                    gateway.is_up()
                ));
            }
        }
        let topics = self
            .block_on(
                self.client()
                    .call(|mut c| async move { c.list_topics(ListTopicsRequest {}).await }),
            )
            .map(|reply| reply.topics)
            .unwrap_or_default();
        for topic in topics {
            for partition in self.partitions(&topic.name).values() {
                let served = self
                    .gateways
                    .iter()
                    .any(|g| g.is_up() && g.id as i32 == partition.owner);
                if !served {
                    return Some(format!(
                        "{}-{} is owned by {}",
                        partition.topic, partition.partition, partition.owner
                    ));
                }
            }
        }
        None
    }

    /// Waits until [`Cluster::unhealthy`] finds nothing wrong.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(problem) = self.unhealthy() else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "cluster not healthy after {timeout:?}: {problem}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the gateways that are up own `topic`'s `partitions` as
    /// evenly as possible (within one partition of each other).
    pub fn wait_balanced(&self, topic: &str, partitions: usize, timeout: Duration) {
        let up: Vec<i32> = self
            .gateways
            .iter()
            .filter(|g| g.is_up())
            .map(|g| g.id as i32)
            .collect();
        let balanced = super::eventually(timeout, || {
            let owners = self.partitions(topic);
            let counts: Vec<usize> = up
                .iter()
                .map(|id| owners.values().filter(|p| p.owner == *id).count())
                .collect();
            let (min, max) = (counts.iter().min(), counts.iter().max());
            owners.len() == partitions
                && counts.iter().sum::<usize>() == partitions
                && max.zip(min).is_some_and(|(max, min)| max - min <= 1)
        });
        assert!(
            balanced,
            "{topic} is not balanced over gateways {up:?}: {:?}",
            self.partitions(topic)
        );
    }

    /// Prints the end of every process's log.
    pub fn print_logs(&self) {
        for process in self
            .metadata
            .iter()
            .chain(&self.bookies)
            .chain(&self.gateways)
        {
            eprintln!(
                "----- {} (last {LOG_TAIL_LINES} lines) -----\n{}",
                process.name(),
                process.log_tail(LOG_TAIL_LINES)
            );
        }
    }
}

impl Drop for Cluster {
    /// When a test fails: prints the end of every log, and keeps the whole
    /// logs in `$STRATA_TEST_KEEP_LOGS/<pid>-<time>/` if that is set.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.print_logs();
        let Ok(keep) = std::env::var("STRATA_TEST_KEEP_LOGS") else {
            return;
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let kept = Path::new(&keep).join(format!("{}-{stamp}", std::process::id()));
        if std::fs::create_dir_all(&kept).is_err() {
            return;
        }
        for process in self
            .metadata
            .iter()
            .chain(&self.bookies)
            .chain(&self.gateways)
        {
            let _ = std::fs::copy(&process.log, kept.join(format!("{}.log", process.name())));
        }
        eprintln!("logs kept in {}", kept.display());
    }
}

/// One acknowledged record.
#[derive(Debug, Clone)]
pub struct Ack {
    pub partition: i32,
    pub offset: i64,
    pub value: String,
    /// When the delivery report arrived.
    pub at: Instant,
}

/// What a producer's delivery reports and error callbacks said.
#[derive(Debug, Default)]
pub struct Deliveries {
    pub acks: Vec<Ack>,
    /// (partition, value, error) of records that were not delivered.
    pub failed: Vec<(i32, String, String)>,
    /// Fatal errors librdkafka reported: the producer stopped working.
    pub fatal: Vec<String>,
    /// Client-wide errors librdkafka recovers from by itself (such as a
    /// refused connection to a dead gateway).
    pub transient_errors: usize,
}

/// Records every delivery report of a producer.
pub struct DeliveryRecorder(Arc<Mutex<Deliveries>>);

impl ClientContext for DeliveryRecorder {
    fn error(&self, error: KafkaError, reason: &str) {
        let mut deliveries = self.0.lock().unwrap();
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            deliveries.fatal.push(format!("{error}: {reason}"));
        } else {
            deliveries.transient_errors += 1;
        }
    }
}

impl ProducerContext for DeliveryRecorder {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let at = Instant::now();
        let value = |m: &rdkafka::message::BorrowedMessage<'_>| {
            String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
        };
        let mut deliveries = self.0.lock().unwrap();
        match result {
            Ok(message) => deliveries.acks.push(Ack {
                partition: message.partition(),
                offset: message.offset(),
                value: value(message),
                at,
            }),
            Err((error, message)) => {
                deliveries
                    .failed
                    .push((message.partition(), value(message), error.to_string()))
            }
        }
    }
}

/// An idempotent librdkafka producer (acks=all) writing `{name}-{seq}` to
/// partition `seq % partitions` of a topic at a steady pace on its own
/// thread, recording every acknowledgement, until stopped.
pub struct LoadProducer {
    pub name: String,
    deliveries: Arc<Mutex<Deliveries>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(ThreadedProducer<DeliveryRecorder>, u64)>>,
}

impl LoadProducer {
    /// Starts sending one record every `interval`, with librdkafka's
    /// `settings` on top of the defaults here.
    pub fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        name: &str,
        interval: Duration,
        settings: &[(&str, &str)],
    ) -> Self {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("request.timeout.ms", "5000")
            .set("topic.metadata.refresh.interval.ms", "1000");
        for (key, value) in settings {
            config.set(*key, *value);
        }
        let deliveries = Arc::new(Mutex::new(Deliveries::default()));
        let producer: ThreadedProducer<DeliveryRecorder> = config
            .create_with_context(DeliveryRecorder(deliveries.clone()))
            .expect("producer is created");
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, topic, name) = (stop.clone(), topic.to_string(), name.to_string());
            std::thread::spawn(move || {
                let mut seq: u64 = 0;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let value = format!("{name}-{seq:08}");
                    let partition = (seq % partitions as u64) as i32;
                    let mut record = BaseRecord::<(), _>::to(&topic)
                        .partition(partition)
                        .payload(&value);
                    // A full local queue only means the cluster is slow: wait.
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((_, back)) if !stop.load(Ordering::Relaxed) => {
                                record = back;
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            Err(_) => return (producer, seq),
                        }
                    }
                    seq += 1;
                    next += interval;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
                (producer, seq)
            })
        };
        Self {
            name: name.to_string(),
            deliveries,
            stop,
            thread: Some(thread),
        }
    }

    /// Acknowledgements so far.
    pub fn acks(&self) -> Vec<Ack> {
        self.deliveries.lock().unwrap().acks.clone()
    }

    /// How many records were acknowledged so far.
    pub fn ack_count(&self) -> usize {
        self.deliveries.lock().unwrap().acks.len()
    }

    /// Stops sending, waits up to `timeout` for every record sent to be
    /// acknowledged or fail; returns what was reported and how many records
    /// were sent.
    pub fn finish(mut self, timeout: Duration) -> (Deliveries, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (producer, sent) = self
            .thread
            .take()
            .expect("not finished yet")
            .join()
            .expect("producer thread ends");
        let flushed = producer.flush(timeout);
        let in_flight = producer.in_flight_count();
        drop(producer);
        let deliveries = std::mem::take(&mut *self.deliveries.lock().unwrap());
        if let Err(error) = flushed {
            eprintln!(
                "producer {}: flush: {error}; {in_flight} records still in flight",
                self.name
            );
        }
        (deliveries, sent)
    }
}

impl Drop for LoadProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Every record of `topic`'s partitions `0..partitions` from the beginning to
/// the high watermark, as (offset, value) by partition, read through any of
/// `bootstrap`'s gateways; waits up to `timeout` for the end.
pub fn read_partitions(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> BTreeMap<i32, Vec<(i64, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "checker")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer is created");
    let deadline = Instant::now() + timeout;
    let mut high: BTreeMap<i32, i64> = BTreeMap::new();
    for partition in 0..partitions {
        loop {
            match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
                Ok((_, hw)) => {
                    high.insert(partition, hw);
                    break;
                }
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "high watermark of {topic}-{partition}: {error}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("partition added");
    }
    consumer.assign(&assignment).expect("partitions assigned");
    let mut read: BTreeMap<i32, Vec<(i64, String)>> =
        (0..partitions).map(|p| (p, Vec::new())).collect();
    let next = |read: &BTreeMap<i32, Vec<(i64, String)>>, p: i32| {
        read[&p].last().map_or(0, |(offset, _)| offset + 1)
    };
    while (0..partitions).any(|p| next(&read, p) < high[&p]) {
        assert!(
            Instant::now() < deadline,
            "read up to {:?} of high watermarks {high:?}",
            (0..partitions).map(|p| next(&read, p)).collect::<Vec<_>>()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Ok(message) = message else {
            continue;
        };
        let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
        read.get_mut(&message.partition())
            .expect("an assigned partition")
            .push((message.offset(), value));
    }
    read
}

/// What the checker found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Records acknowledged to producers.
    pub acked: usize,
    /// Acknowledged records not found at the offset they were acknowledged
    /// at (or, for those acknowledged without an offset, not in their
    /// partition at all).
    pub lost: usize,
    /// Records acknowledged without an offset: librdkafka reports offset
    /// -1001 for a batch whose request timed out but which a later batch's
    /// success proved written ("implicitly acked").
    pub acked_without_offset: usize,
    /// Extra copies of values present more than once in the log.
    pub duplicated: usize,
    /// Records of a producer that come after a later record of the same
    /// producer in their partition.
    pub reordered: usize,
    /// Records in the log that were never acknowledged (allowed: a produce
    /// whose answer was lost may still have been written).
    pub unacked_present: usize,
    /// Offsets missing or repeated between consecutive records of a partition.
    pub offset_gaps: usize,
    /// A few examples of each problem, for the failure message.
    pub examples: Vec<String>,
}

impl Verdict {
    /// Whether nothing was lost, duplicated, reordered or skipped.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.offset_gaps == 0
    }
}

/// The counts, for the test's output: what the checker prints on every run.
impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "acked {} ({} without an offset), lost {}, duplicated {}, reordered {}, \
             offset gaps {}, unacknowledged in the log {}",
            self.acked,
            self.acked_without_offset,
            self.lost,
            self.duplicated,
            self.reordered,
            self.offset_gaps,
            self.unacked_present
        )
    }
}

/// Compares what was acknowledged with what the log holds. Values are
/// `{producer}-{seq}`, and every producer's sequence grows in send order.
pub fn check(acks: &[Ack], log: &BTreeMap<i32, Vec<(i64, String)>>) -> Verdict {
    let mut verdict = Verdict {
        acked: acks.len(),
        ..Verdict::default()
    };
    fn example(verdict: &mut Verdict, text: String) {
        if verdict.examples.len() < 20 {
            verdict.examples.push(text);
        }
    }
    let at: HashMap<(i32, i64), &str> = log
        .iter()
        .flat_map(|(p, records)| records.iter().map(move |(o, v)| ((*p, *o), v.as_str())))
        .collect();
    let placed: HashMap<(i32, &str), i64> = log
        .iter()
        .flat_map(|(p, records)| records.iter().map(move |(o, v)| ((*p, v.as_str()), *o)))
        .collect();
    for ack in acks {
        if ack.offset < 0 {
            verdict.acked_without_offset += 1;
            if !placed.contains_key(&(ack.partition, ack.value.as_str())) {
                verdict.lost += 1;
                example(
                    &mut verdict,
                    format!(
                        "lost: {} acknowledged without an offset in partition {}, which does not hold it",
                        ack.value, ack.partition
                    ),
                );
            }
            continue;
        }
        let found = at.get(&(ack.partition, ack.offset)).copied();
        if found != Some(ack.value.as_str()) {
            verdict.lost += 1;
            example(
                &mut verdict,
                format!(
                    "lost: {} acknowledged at {}:{}, log has {found:?}",
                    ack.value, ack.partition, ack.offset
                ),
            );
        }
    }
    let acked_values: std::collections::HashSet<&str> =
        acks.iter().map(|a| a.value.as_str()).collect();
    let mut copies: HashMap<&str, Vec<(i32, i64)>> = HashMap::new();
    for (partition, records) in log {
        let mut last_seq: HashMap<&str, (u64, i64)> = HashMap::new();
        let mut expected_offset = records.first().map_or(0, |(offset, _)| *offset);
        for (offset, value) in records {
            if *offset != expected_offset {
                verdict.offset_gaps += 1;
                example(
                    &mut verdict,
                    format!(
                        "offsets: {partition}:{offset} follows {}",
                        expected_offset - 1
                    ),
                );
            }
            expected_offset = offset + 1;
            let places = copies.entry(value).or_default();
            places.push((*partition, *offset));
            if places.len() > 1 {
                // Counted as duplicated below, not as reordered.
                continue;
            }
            if !acked_values.contains(value.as_str()) {
                verdict.unacked_present += 1;
            }
            let Some((producer, seq)) = value.rsplit_once('-') else {
                continue;
            };
            let Ok(seq) = seq.parse::<u64>() else {
                continue;
            };
            if let Some((previous, previous_offset)) = last_seq.insert(producer, (seq, *offset)) {
                if previous > seq {
                    verdict.reordered += 1;
                    example(
                        &mut verdict,
                        format!(
                            "reordered: {value} at {partition}:{offset} after {producer}-{previous:08} at {previous_offset}"
                        ),
                    );
                }
            }
        }
    }
    for (value, places) in copies {
        if places.len() > 1 {
            verdict.duplicated += places.len() - 1;
            let acked_at: Vec<(i32, i64)> = acks
                .iter()
                .filter(|a| a.value == value)
                .map(|a| (a.partition, a.offset))
                .collect();
            example(
                &mut verdict,
                format!("duplicated: {value} at {places:?}, acknowledged at {acked_at:?}"),
            );
        }
    }
    verdict
}
