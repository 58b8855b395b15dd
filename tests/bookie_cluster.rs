//! Real `strata bookie` processes written through the ledger client: entries
//! acknowledged before a kill -9 survive it, a Qw=3/Qa=2 segment keeps taking
//! writes with a bookie gone, and recovery seals past every confirmed entry and
//! fences the old writer.

mod common;

use bytes::Bytes;
use common::role::{free_port, RoleProcess};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata_bookie::ledger::{
    recover, BookiePool, LedgerOptions, LedgerReader, LedgerSpec, LedgerWriter,
};

/// A bookie process on a fixed port, so it can come back at the same address.
struct BookieProcess {
    process: Option<RoleProcess>,
    port: u16,
    data_dir: String,
    log: std::path::PathBuf,
    metadata_addr: String,
    node_id: i32,
}

impl BookieProcess {
    fn start(dir: &Path, node_id: i32, metadata_addr: &str) -> Self {
        let mut bookie = Self {
            process: None,
            port: free_port(),
            data_dir: dir.join(format!("bookie-{node_id}")).display().to_string(),
            log: dir.join(format!("bookie-{node_id}.log")),
            metadata_addr: metadata_addr.to_string(),
            node_id,
        };
        bookie.restart();
        bookie
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let args: Vec<String> = vec![
            "bookie".into(),
            "--node-id".into(),
            self.node_id.to_string(),
            "--listen-addr".into(),
            self.addr(),
            "--data-dir".into(),
            self.data_dir.clone(),
            "--metadata-addrs".into(),
            self.metadata_addr.clone(),
        ];
        self.process = Some(RoleProcess::start(&args, &self.log, "bookie"));
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}

fn metadata(dir: &Path) -> RoleProcess {
    let args: Vec<String> = vec![
        "metadata".into(),
        "--listen-addr".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.join("meta").display().to_string(),
    ];
    RoleProcess::start(&args, &dir.join("meta.log"), "metadata")
}

/// The payload of entry `id`: about 1 KiB that only that entry has.
fn payload(id: i64) -> Bytes {
    Bytes::from(format!("entry {id:08} ").repeat(70))
}

/// Adds entries 0..count, spawning a task per add that records its id once
/// confirmed; stops at the first add the writer refuses.
async fn write(writer: &mut LedgerWriter, count: i64, acked: &Arc<Mutex<Vec<i64>>>) {
    for id in 0..count {
        let Ok(pending) = writer.add(payload(id), id).await else {
            return;
        };
        let acked = acked.clone();
        tokio::spawn(async move {
            if let Ok(entry_id) = pending.await {
                acked.lock().unwrap().push(entry_id);
            }
        });
    }
}

async fn wait_for_acks(acked: &Arc<Mutex<Vec<i64>>>, count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "adds were not confirmed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads entries 0..=last and checks each is whole and is the entry written.
async fn read_all(spec: &LedgerSpec, last: i64) -> Vec<i64> {
    let reader =
        LedgerReader::new(spec.clone(), &BookiePool::new(LedgerOptions::default())).unwrap();
    let mut ids = Vec::new();
    let mut next = 0;
    while next <= last {
        let batch = reader
            .read(next, last, 1 << 20)
            .await
            .expect("entries read");
        assert!(!batch.entries.is_empty(), "entry {next} is readable");
        for entry in batch.entries {
            assert_eq!(entry.entry_id, next);
            assert_eq!(entry.payload, payload(next), "entry {next} is whole");
            assert_eq!(entry.base_offset, next);
            ids.push(next);
            next += 1;
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn entries_acknowledged_before_a_kill_9_survive_it() {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(dir.path());
    let mut bookie = BookieProcess::start(dir.path(), 1, &meta.addr);
    let spec = LedgerSpec::new(1, vec![bookie.addr()], 1, 1).unwrap();
    let mut writer =
        LedgerWriter::open(spec.clone(), 1, &BookiePool::new(LedgerOptions::default())).unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));

    // Kill the bookie while adds are in flight.
    let writing = {
        let acked = acked.clone();
        tokio::spawn(async move {
            write(&mut writer, 100_000, &acked).await;
            writer
        })
    };
    wait_for_acks(&acked, 500).await;
    bookie.kill();
    let writer = writing.await.unwrap();
    assert!(writer.failure().is_some(), "the writer saw the bookie go");
    let acknowledged = acked.lock().unwrap().clone();
    let last_acked = *acknowledged.iter().max().unwrap();

    bookie.restart();
    let pool = BookiePool::new(LedgerOptions::default());
    let outcome = recover(&spec, 2, &pool)
        .await
        .expect("recovery after restart");
    assert!(
        outcome.last_entry_id >= last_acked,
        "recovered end {} is past the last acknowledged entry {last_acked}",
        outcome.last_entry_id
    );
    let readable = read_all(&spec, outcome.last_entry_id).await;
    for id in acknowledged {
        assert!(
            readable.binary_search(&id).is_ok(),
            "acknowledged entry {id} survived"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn qw3_qa2_writes_go_on_without_a_bookie_and_recovery_fences_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let meta = metadata(dir.path());
    let mut bookies: Vec<BookieProcess> = (1..=3)
        .map(|id| BookieProcess::start(dir.path(), id, &meta.addr))
        .collect();
    let spec = LedgerSpec::new(7, bookies.iter().map(|b| b.addr()).collect(), 3, 2).unwrap();
    let mut writer =
        LedgerWriter::open(spec.clone(), 1, &BookiePool::new(LedgerOptions::default())).unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));

    write(&mut writer, 200, &acked).await;
    wait_for_acks(&acked, 200).await;
    bookies[1].kill();
    // With one of three bookies gone, every add still reaches two.
    let more: Vec<_> = {
        let mut pending = Vec::new();
        for id in 200..400 {
            pending.push(writer.add(payload(id), id).await.expect("add accepted"));
        }
        pending
    };
    for add in more {
        add.await.expect("confirmed by the two live bookies");
    }
    assert_eq!(writer.last_add_confirmed(), 399);

    // The writer "dies" (stops writing without sealing); a new owner recovers.
    let pool = BookiePool::new(LedgerOptions::default());
    let outcome = recover(&spec, 2, &pool)
        .await
        .expect("recovery with two bookies");
    assert!(
        outcome.last_entry_id >= 399,
        "sealed at {}",
        outcome.last_entry_id
    );
    let refused = match writer.add(payload(400), 400).await {
        Err(error) => error,
        Ok(pending) => pending.await.expect_err("a fenced writer's add is refused"),
    };
    assert!(refused.is_fenced(), "refused as fenced: {refused}");
    assert_eq!(
        read_all(&spec, outcome.last_entry_id).await.len() as i64,
        outcome.last_entry_id + 1
    );
}
