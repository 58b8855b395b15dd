//! Harness for whole-cluster tests: runs the real `strata` binary as a child
//! process on loopback ports and talks to it the way users do.

#![allow(dead_code)]

pub mod cluster;
pub mod group;
pub mod role;
pub mod wire;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a cluster may take to print its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `strata` binary built for these tests.
pub fn strata_bin() -> &'static str {
    env!("CARGO_BIN_EXE_strata")
}

/// A `strata dev` process and where it listens.
pub struct DevCluster {
    child: Option<Child>,
    /// Address of the Kafka listener.
    pub kafka_addr: SocketAddr,
    /// Address of the metadata gRPC service.
    pub metadata_addr: SocketAddr,
    /// Addresses of the bookies.
    pub bookie_addrs: Vec<SocketAddr>,
    data_dir: PathBuf,
}

impl DevCluster {
    /// Starts `strata dev` on free loopback ports with its data in `data_dir`.
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[])
    }

    /// Like [`DevCluster::start`], with more `strata dev` arguments (such as
    /// `--gateway-config FILE`).
    pub fn start_with(data_dir: &Path, extra_args: &[String]) -> Self {
        let mut child = Command::new(strata_bin())
            .arg("dev")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--kafka-addr", "127.0.0.1:0", "--grpc-base-port", "0"])
            .args(extra_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("strata dev starts");
        let lines_rx = stdout_lines(&mut child);
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut kafka_addr, mut metadata_addr, mut bookie_addrs) = (None, None, Vec::new());
        while kafka_addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines_rx
                .recv_timeout(left)
                .expect("strata dev prints its addresses before the deadline");
            let mut words = line.split_whitespace();
            let (Some(role), Some(addr)) = (words.next(), words.next()) else {
                continue;
            };
            let addr = addr.trim_start_matches("grpc://");
            match role {
                "metadata" => metadata_addr = addr.parse().ok(),
                r if r.starts_with("bookie-") => {
                    bookie_addrs.extend(addr.parse::<SocketAddr>().ok())
                }
                "kafka" => kafka_addr = addr.parse().ok(),
                _ => {}
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || while lines_rx.recv().is_ok() {});
        DevCluster {
            child: Some(child),
            kafka_addr: kafka_addr.expect("kafka address printed"),
            metadata_addr: metadata_addr.expect("metadata address printed"),
            bookie_addrs,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// The object store directory of the cluster, which gateways started
    /// beside it must share (`--objects-dir`).
    pub fn objects_dir(&self) -> String {
        self.data_dir.join("objects").display().to_string()
    }

    /// `host:port` of the Kafka listener, as a client's bootstrap.servers.
    pub fn bootstrap(&self) -> String {
        self.kafka_addr.to_string()
    }

    /// Runs `strata admin` against this cluster and returns its output.
    pub fn admin(&self, args: &[&str]) -> std::process::Output {
        admin(&self.metadata_addr.to_string(), args)
    }

    /// Runs `strata admin ARGS...`, which must succeed, and returns its stdout.
    pub fn admin_ok(&self, args: &[&str]) -> String {
        admin_ok(&self.metadata_addr.to_string(), args)
    }

    /// Creates `topic` with `partitions` partitions through `strata admin`.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        create_topic(&self.metadata_addr.to_string(), topic, partitions);
    }

    /// The live segments of `topic`'s partition 0, straight from metadata
    /// (none while metadata does not answer).
    pub async fn segments(&self, topic: &str) -> Vec<strata_proto::metadata::SegmentInfo> {
        let addrs = [self.metadata_addr.to_string()];
        let client = strata_metadata::client::MetadataClient::connect_lazy(&addrs)
            .expect("a metadata client");
        let request = strata_proto::metadata::ListSegmentsRequest {
            topic: topic.into(),
            partition: 0,
        };
        client
            .send(request, |mut metadata, request| async move {
                metadata.list_segments(request).await
            })
            .await
            .map(|r| r.segments)
            .unwrap_or_default()
    }

    /// Starts `strata gateway` with node id `node_id` beside this cluster
    /// (same metadata, same object store), logging to `log`, with more flags.
    pub fn start_gateway(&self, node_id: i32, log: &Path, extra: &[&str]) -> role::RoleProcess {
        let mut args: Vec<String> = [
            "gateway",
            "--node-id",
            &node_id.to_string(),
            "--kafka-listen-addr",
            "127.0.0.1:0",
            "--metadata-addrs",
            &self.metadata_addr.to_string(),
            "--objects-dir",
            &self.objects_dir(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        role::RoleProcess::start(&args, log, "kafka")
    }

    /// Kills the process with SIGKILL: nothing is flushed or closed.
    pub fn kill(mut self) {
        let mut child = self.child.take().expect("cluster is running");
        child.kill().expect("SIGKILL delivered");
        child.wait().expect("killed process is reaped");
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("cluster is running");
        terminate(&mut child)
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The lines `child` prints on its piped stdout, read on a thread of their own
/// so that the child never blocks on a full pipe while nobody is receiving.
pub fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout is piped");
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    lines_rx
}

/// Sends SIGTERM to `child` and waits (bounded) for it to exit.
pub fn terminate(child: &mut Child) -> ExitStatus {
    let pid = child.id().to_string();
    let sent = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success(), "SIGTERM delivered");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("child can be waited on") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not stop within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `strata admin --metadata-addrs <metadata_addrs> <args>`, which must
/// succeed, and returns its stdout.
pub fn admin_ok(metadata_addrs: &str, args: &[&str]) -> String {
    let out = admin(metadata_addrs, args);
    assert!(
        out.status.success(),
        "strata admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `strata admin --metadata-addrs <metadata_addrs> <args>` and returns its output.
pub fn admin(metadata_addrs: &str, args: &[&str]) -> std::process::Output {
    Command::new(strata_bin())
        .args(["admin", "--metadata-addrs", metadata_addrs])
        .args(args)
        .output()
        .expect("strata admin runs")
}

/// Creates `topic` with `partitions` partitions through `strata admin`.
pub fn create_topic(metadata_addrs: &str, topic: &str, partitions: i32) {
    let out = admin(
        metadata_addrs,
        &[
            "topics",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A librdkafka consumer of `cluster` outside any consumer group (nothing is
/// committed), for reading partitions by assignment.
pub fn plain_consumer(cluster: &DevCluster) -> rdkafka::consumer::BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", "unused")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer is created")
}

/// A [`plain_consumer`] assigned partitions `0..partitions` of `topic`, each
/// from its beginning.
pub fn consumer_from_beginning(
    cluster: &DevCluster,
    topic: &str,
    partitions: i32,
) -> rdkafka::consumer::BaseConsumer {
    use rdkafka::consumer::Consumer;
    let consumer = plain_consumer(cluster);
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, rdkafka::Offset::Beginning)
            .expect("partition added");
    }
    consumer.assign(&assignment).expect("partitions assigned");
    consumer
}

/// `strata dev` flags for config files, written into `dir`, that make
/// retention, offload and bookie GC run every 200 ms, with no grace for
/// offloaded segments. `gateway_extra` is appended to the gateway's file
/// (an `[object_store]` table, say).
pub fn quick_maintenance_configs(dir: &Path, gateway_extra: &str) -> Vec<String> {
    let gateway = dir.join("gateway.toml");
    std::fs::write(
        &gateway,
        format!("retention_check_interval_ms = 200\n{gateway_extra}"),
    )
    .expect("gateway config is written");
    let bookie = dir.join("bookie.toml");
    std::fs::write(&bookie, "gc_interval_ms = 200\ngc_offloaded_grace_ms = 0\n")
        .expect("bookie config is written");
    vec![
        "--gateway-config".into(),
        gateway.display().to_string(),
        "--bookie-config".into(),
        bookie.display().to_string(),
    ]
}
