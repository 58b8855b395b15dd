//! The metadata service as a replicated group of real `strata metadata`
//! processes talking gRPC on loopback: leader failover, restart from RocksDB,
//! snapshot catch-up, and the controller moving ownership off a dead gateway.

mod common;

use common::role::{free_port, RoleProcess};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strata_metadata::client::MetadataClient;
use strata_proto::admin::{ClusterStatusRequest, ClusterStatusResponse};
use strata_proto::error_code;
use strata_proto::metadata::{
    CreateTopicRequest, ListPartitionsRequest, ListTopicsRequest, OpenSegmentRequest, PartitionInfo,
};

/// A metadata group of separate processes sharing one peers list.
struct Group {
    dir: PathBuf,
    ports: Vec<u16>,
    nodes: Vec<Option<RoleProcess>>,
    extra: Vec<String>,
}

impl Group {
    fn start(dir: &Path, size: usize, extra: &[&str]) -> Self {
        let mut group = Group {
            dir: dir.to_path_buf(),
            ports: (0..size).map(|_| free_port()).collect(),
            nodes: (0..size).map(|_| None).collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=size as u64 {
            group.start_node(id);
        }
        group
    }

    fn addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[id as usize - 1])
    }

    fn start_node(&mut self, id: u64) {
        let peers: Vec<String> = (1..=self.ports.len() as u64)
            .map(|peer| format!("{peer}={}", self.addr(peer)))
            .collect();
        let mut args: Vec<String> = vec![
            "metadata".into(),
            "--node-id".into(),
            id.to_string(),
            "--listen-addr".into(),
            self.addr(id),
            "--data-dir".into(),
            self.dir.join(format!("meta-{id}")).display().to_string(),
            "--peers".into(),
            peers.join(","),
        ];
        args.extend(self.extra.iter().cloned());
        let log = self.dir.join(format!("meta-{id}.log"));
        self.nodes[id as usize - 1] = Some(RoleProcess::start(&args, &log, "metadata"));
    }

    fn node(&mut self, id: u64) -> &mut RoleProcess {
        self.nodes[id as usize - 1]
            .as_mut()
            .expect("node is running")
    }

    fn kill(&mut self, id: u64) {
        self.node(id).kill();
        self.nodes[id as usize - 1] = None;
    }

    fn stop(&mut self, id: u64) {
        self.node(id).stop();
        self.nodes[id as usize - 1] = None;
    }

    fn running(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|id| self.nodes[*id as usize - 1].is_some())
            .collect()
    }

    /// A client of every running node.
    fn client(&self) -> MetadataClient {
        let addrs: Vec<String> = self.running().iter().map(|id| self.addr(*id)).collect();
        MetadataClient::connect_lazy(&addrs).unwrap()
    }

    /// A client of one node only.
    fn client_of(&self, id: u64) -> MetadataClient {
        MetadataClient::connect_lazy(&[self.addr(id)])
            .unwrap()
            .with_retry_for(Duration::from_secs(2))
    }

    async fn status_of(&self, id: u64) -> Option<ClusterStatusResponse> {
        self.client_of(id)
            .admin_call(|mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
            .await
            .ok()
    }

    /// The leader every running node agrees on, waiting up to `timeout`.
    async fn agreed_leader(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            for id in self.running() {
                leaders.push(self.status_of(id).await.map(|s| s.raft_leader));
            }
            if let Some(Some(leader)) = leaders.first() {
                if *leader != 0 && leaders.iter().all(|l| *l == Some(*leader)) {
                    return *leader;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn create_topic(client: &MetadataClient, name: &str, partitions: i32) -> i32 {
    let request = CreateTopicRequest {
        name: name.into(),
        partition_count: partitions,
        ..Default::default()
    };
    let reply = client
        .send(request, |mut c, request| async move {
            c.create_topic(request).await
        })
        .await
        .expect("create topic call succeeds");
    reply.outcome.unwrap_or_default().error_code
}

async fn topic_names(client: &MetadataClient) -> Vec<String> {
    let mut names: Vec<String> = client
        .call(|mut c| async move { c.list_topics(ListTopicsRequest {}).await })
        .await
        .expect("list topics")
        .topics
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_failover_is_fast_and_state_survives_a_full_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut group = Group::start(dir.path(), 3, &[]);
    let old_leader = group.agreed_leader(Duration::from_secs(30)).await;
    assert_eq!(create_topic(&group.client(), "before", 3).await, 0);
    let named = common::eventually(Duration::from_secs(10), || {
        futures_block(group.status_of(old_leader)).is_some_and(|s| !s.cluster_id.is_empty())
    });
    assert!(named, "the new group names its cluster");
    let status = group.status_of(old_leader).await.unwrap();
    let cluster_id = status.cluster_id.clone();
    assert_eq!(status.metadata_members.len(), 3);
    assert!(status.raft_term >= 1);

    group.kill(old_leader);
    let killed_at = Instant::now();
    let survivors = group.client();
    assert_eq!(create_topic(&survivors, "after", 1).await, 0);
    let failover = killed_at.elapsed();
    println!("metadata failover: a write was accepted {failover:?} after the leader was killed");
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    let new_leader = group.agreed_leader(Duration::from_secs(10)).await;
    assert_ne!(new_leader, old_leader);

    // The killed node comes back and catches up; then every node restarts
    // from its RocksDB directory.
    group.start_node(old_leader);
    let rejoined = group.client_of(old_leader);
    let caught_up = common::eventually(Duration::from_secs(20), || {
        let names = futures_block(topic_names(&rejoined));
        names == ["after", "before"]
    });
    assert!(caught_up, "restarted node caught up with the log");
    for id in 1..=3 {
        group.stop(id);
    }
    for id in 1..=3 {
        group.start_node(id);
    }
    group.agreed_leader(Duration::from_secs(30)).await;
    for id in 1..=3 {
        assert_eq!(topic_names(&group.client_of(id)).await, ["after", "before"]);
        let status = group.status_of(id).await.unwrap();
        assert_eq!(status.cluster_id, cluster_id, "cluster id of node {id}");
    }
    assert_eq!(
        create_topic(&group.client(), "after", 1).await,
        error_code::TOPIC_ALREADY_EXISTS
    );
}

/// Runs a future to completion from synchronous code inside the test runtime.
fn futures_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_follower_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut group = Group::start(dir.path(), 3, &["--snapshot-after-entries", "20"]);
    let leader = group.agreed_leader(Duration::from_secs(30)).await;
    let lagging = if leader == 3 { 2 } else { 3 };
    group.stop(lagging);
    let client = group.client();
    for i in 0..60 {
        assert_eq!(create_topic(&client, &format!("t{i:02}"), 1).await, 0);
    }
    group.start_node(lagging);
    let follower = group.client_of(lagging);
    let caught_up = common::eventually(Duration::from_secs(30), || {
        futures_block(topic_names(&follower)).len() == 60
    });
    assert!(caught_up, "lagging follower has all 60 topics");
    let log = group.node(lagging).log_text();
    assert!(
        log.contains("installed metadata snapshot"),
        "the follower caught up through a snapshot"
    );
}

/// Partition owners of `topic` as seen by the metadata service.
async fn owners(client: &MetadataClient, topic: &str) -> BTreeMap<u32, PartitionInfo> {
    let request = ListPartitionsRequest {
        topic: topic.into(),
    };
    client
        .send(request, |mut c, request| async move {
            c.list_partitions(request).await
        })
        .await
        .expect("list partitions")
        .partitions
        .into_iter()
        .map(|p| (p.partition, p))
        .collect()
}

fn count_owned(partitions: &BTreeMap<u32, PartitionInfo>, gateway: i32) -> usize {
    partitions.values().filter(|p| p.owner == gateway).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn ownership_moves_off_a_dead_gateway_and_fences_its_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let meta_args: Vec<String> = [
        "metadata",
        "--listen-addr",
        "127.0.0.1:0",
        "--lease-ms",
        "3000",
        "--heartbeat-interval-ms",
        "200",
        "--controller-interval-ms",
        "100",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.path().join("meta").display().to_string()])
    .collect();
    let meta = RoleProcess::start(&meta_args, &dir.path().join("meta.log"), "metadata");
    let bookie_args: Vec<String> = vec![
        "bookie".into(),
        "--listen-addr".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.path().join("bookie").display().to_string(),
        "--metadata-addrs".into(),
        meta.addr.clone(),
    ];
    let _bookie = RoleProcess::start(&bookie_args, &dir.path().join("bookie.log"), "bookie");
    let gateway = |id: i32| {
        let args: Vec<String> = vec![
            "gateway".into(),
            "--node-id".into(),
            id.to_string(),
            "--kafka-listen-addr".into(),
            "127.0.0.1:0".into(),
            "--metadata-addrs".into(),
            meta.addr.clone(),
        ];
        RoleProcess::start(&args, &dir.path().join(format!("gw-{id}.log")), "kafka")
    };
    let client = MetadataClient::connect_lazy(std::slice::from_ref(&meta.addr)).unwrap();
    let _gw1 = gateway(1);
    assert_eq!(create_topic(&client, "orders", 6).await, 0);
    let all_on_one = common::eventually(Duration::from_secs(10), || {
        count_owned(&futures_block(owners(&client, "orders")), 1) == 6
    });
    assert!(all_on_one, "the only gateway owns every partition");

    // A second gateway joins: half the partitions move to it.
    let mut gw2 = gateway(2);
    let balanced = common::eventually(Duration::from_secs(10), || {
        let partitions = futures_block(owners(&client, "orders"));
        count_owned(&partitions, 1) == 3 && count_owned(&partitions, 2) == 3
    });
    assert!(balanced, "ownership is balanced over two gateways");
    let before = owners(&client, "orders").await;

    // The second gateway dies: its partitions go back to the first, at a higher epoch.
    gw2.kill();
    let moved = common::eventually(Duration::from_secs(10), || {
        count_owned(&futures_block(owners(&client, "orders")), 1) == 6
    });
    assert!(moved, "a dead gateway's partitions move to the live one");
    let after = owners(&client, "orders").await;
    let (&partition, stale) = before.iter().find(|(_, p)| p.owner == 2).unwrap();
    assert!(after[&partition].leader_epoch > stale.leader_epoch);

    let open = |owner: i32, leader_epoch: u32| OpenSegmentRequest {
        topic: "orders".into(),
        partition,
        owner,
        leader_epoch,
        base_offset: 0,
        ensemble: vec![1],
        write_quorum: 1,
        ack_quorum: 1,
    };
    let open_segment = |request: OpenSegmentRequest| {
        let client = client.clone();
        async move {
            client
                .send(request, |mut c, request| async move {
                    c.open_segment(request).await
                })
                .await
                .expect("open segment call")
                .outcome
                .unwrap_or_default()
                .error_code
        }
    };
    let current = after[&partition].leader_epoch;
    // The dead owner's write at its old epoch is fenced ...
    assert_eq!(
        open_segment(open(2, stale.leader_epoch)).await,
        error_code::FENCED_LEADER_EPOCH
    );
    // ... at the current epoch it is not the owner ...
    assert_eq!(
        open_segment(open(2, current)).await,
        error_code::NOT_LEADER_OR_FOLLOWER
    );
    // ... the new owner is fenced at the stale epoch too ...
    assert_eq!(
        open_segment(open(1, stale.leader_epoch)).await,
        error_code::FENCED_LEADER_EPOCH
    );
    // ... and succeeds at the current one.
    assert_eq!(open_segment(open(1, current)).await, 0);

    // A gateway that stops cleanly gives its partitions up at once, without
    // waiting for its lease to lapse.
    let mut gw3 = gateway(3);
    let shared = common::eventually(Duration::from_secs(10), || {
        count_owned(&futures_block(owners(&client, "orders")), 3) == 3
    });
    assert!(shared, "a third gateway takes its share");
    gw3.stop();
    let stopped_at = Instant::now();
    let returned = common::eventually(Duration::from_secs(10), || {
        count_owned(&futures_block(owners(&client, "orders")), 1) == 6
    });
    assert!(returned, "the stopped gateway's partitions move");
    assert!(
        stopped_at.elapsed() < Duration::from_millis(3000),
        "moved before the 3 s lease could lapse: {:?}",
        stopped_at.elapsed()
    );
}

/// Runs `strata admin --metadata-addrs ADDR ARGS...`.
fn admin(addr: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(common::strata_bin())
        .args(["admin", "--metadata-addrs", addr])
        .args(args)
        .output()
        .expect("strata admin runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn members_are_added_promoted_and_removed_with_admin() {
    let dir = tempfile::tempdir().unwrap();
    let node = |id: u64, extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "metadata".into(),
            "--node-id".into(),
            id.to_string(),
            "--listen-addr".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.path().join(format!("meta-{id}")).display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        RoleProcess::start(
            &args,
            &dir.path().join(format!("meta-{id}.log")),
            "metadata",
        )
    };
    let first = node(1, &[]);
    let second = node(2, &["--join", "true"]);
    let first_client = MetadataClient::connect_lazy(std::slice::from_ref(&first.addr)).unwrap();
    assert_eq!(create_topic(&first_client, "early", 1).await, 0);

    let text = |out: &std::process::Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let added = admin(&first.addr, &["metadata", "add-learner", "2", &second.addr]);
    assert!(added.status.success(), "{added:?}");
    assert!(text(&added).contains("learner"), "{}", text(&added));
    // The learner has the log: it serves reads of what was written before it joined.
    let second_client = MetadataClient::connect_lazy(std::slice::from_ref(&second.addr)).unwrap();
    let has_log = common::eventually(Duration::from_secs(10), || {
        futures_block(topic_names(&second_client)) == ["early"]
    });
    assert!(has_log, "the learner caught up");

    // Membership calls work through any member: this one goes to the learner.
    let promoted = admin(&second.addr, &["metadata", "promote", "2"]);
    assert!(promoted.status.success(), "{promoted:?}");
    assert_eq!(
        text(&promoted).matches("voter").count(),
        2,
        "{}",
        text(&promoted)
    );
    let status = text(&admin(&second.addr, &["status"]));
    assert!(
        status.contains("answered by    metadata node 2"),
        "{status}"
    );

    let unknown = admin(&first.addr, &["metadata", "promote", "7"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("not a member"),
        "{unknown:?}"
    );

    let removed = admin(&first.addr, &["metadata", "remove", "2"]);
    assert!(removed.status.success(), "{removed:?}");
    assert_eq!(
        text(&removed).matches("voter").count(),
        1,
        "{}",
        text(&removed)
    );
    assert_eq!(create_topic(&first_client, "late", 1).await, 0);
}
