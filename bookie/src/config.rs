//! Configuration of one bookie.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Everything a bookie needs to start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BookieConfig {
    /// This bookie's id, unique among bookies.
    pub node_id: i32,
    /// Address the gRPC server binds.
    pub listen_addr: SocketAddr,
    /// Address other nodes are told to reach this bookie at; defaults to the bound address.
    pub advertised_addr: Option<String>,
    /// Availability zone, used to spread ensembles.
    pub zone: String,
    /// Directory of the journal, entry logs and index.
    pub data_dir: PathBuf,
    /// Addresses (`host:port`) of the metadata nodes.
    pub metadata_addrs: Vec<String>,
    /// Whether the journal `fdatasync`s before an add is acknowledged.
    pub journal_sync: JournalSync,
    /// Most bytes of journal records that one group commit writes and syncs at once.
    pub journal_max_batch_bytes: u64,
    /// Longest time (µs) a group commit keeps gathering adds that keep arriving;
    /// an add that finds the journal idle is written at once.
    pub journal_max_wait_us: u64,
    /// A journal file is closed and a new one started past this size.
    pub journal_file_bytes: u64,
    /// An entry-log file is closed and a new one started past this size.
    pub entry_log_file_bytes: u64,
    /// Largest entry payload (one Kafka record batch) accepted.
    pub max_entry_bytes: u64,
    /// Most payload bytes one read returns (it always returns at least one entry);
    /// also the default of a read that asks for 0.
    pub max_read_bytes: u64,
    /// Most bytes of adds accepted but not yet durable and applied; further adds wait.
    pub max_pending_add_bytes: u64,
    /// How often (ms) entry logs and the index are synced and the journal trimmed.
    pub checkpoint_interval_ms: u64,
    /// How often (ms) garbage collection and entry-log compaction run.
    pub gc_interval_ms: u64,
    /// How long (ms) after first seeing a segment offloaded this bookie keeps its copy.
    pub gc_offloaded_grace_ms: u64,
    /// Entry logs whose live bytes fall below this fraction of their size are compacted.
    pub compaction_live_ratio: f64,
    /// Below this many free bytes on the data disk, adds are refused (reads,
    /// deletes and garbage collection go on).
    pub min_free_bytes: u64,
    /// How often (ms) the free space of the data disk is measured.
    pub disk_check_interval_ms: u64,
    /// Whether this bookie takes part in auto-recovery: re-replicating sealed
    /// segments that lost a replica with a dead bookie.
    pub auto_recovery: bool,
    /// How long (ms) a bookie's lease must have lapsed before its segments are
    /// re-replicated, so that a bookie that restarts quickly costs no copying.
    pub auto_recovery_delay_ms: u64,
    /// How often (ms) this bookie looks for under-replicated segments.
    pub auto_recovery_interval_ms: u64,
}

impl Default for BookieConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7601)),
            advertised_addr: None,
            zone: String::new(),
            data_dir: PathBuf::from("./strata-data/bookie-1"),
            metadata_addrs: vec!["127.0.0.1:7600".into()],
            journal_sync: JournalSync::Always,
            journal_max_batch_bytes: 4 * MIB,
            journal_max_wait_us: 1000,
            journal_file_bytes: 256 * MIB,
            entry_log_file_bytes: 512 * MIB,
            max_entry_bytes: 4 * MIB,
            max_read_bytes: 4 * MIB,
            max_pending_add_bytes: 64 * MIB,
            checkpoint_interval_ms: 10_000,
            gc_interval_ms: 60_000,
            gc_offloaded_grace_ms: 600_000,
            compaction_live_ratio: 0.5,
            min_free_bytes: 128 * MIB,
            disk_check_interval_ms: 1000,
            auto_recovery: true,
            auto_recovery_delay_ms: 5_000,
            auto_recovery_interval_ms: 2_000,
        }
    }
}

/// A bookie configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("invalid bookie config: {0}")]
pub struct ConfigError(pub String);

impl BookieConfig {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("journal_max_batch_bytes", self.journal_max_batch_bytes),
            ("journal_file_bytes", self.journal_file_bytes),
            ("entry_log_file_bytes", self.entry_log_file_bytes),
            ("max_entry_bytes", self.max_entry_bytes),
            ("max_read_bytes", self.max_read_bytes),
            ("checkpoint_interval_ms", self.checkpoint_interval_ms),
            ("gc_interval_ms", self.gc_interval_ms),
            ("disk_check_interval_ms", self.disk_check_interval_ms),
            ("auto_recovery_interval_ms", self.auto_recovery_interval_ms),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError(format!("{name} must be at least 1")));
        }
        // One add must always fit in the pending budget and in one record frame.
        if self.max_pending_add_bytes < self.max_entry_bytes {
            return Err(ConfigError(
                "max_pending_add_bytes must be at least max_entry_bytes".into(),
            ));
        }
        if self.max_entry_bytes > u64::from(u32::MAX) / 2 {
            return Err(ConfigError("max_entry_bytes must be below 2 GiB".into()));
        }
        if !(0.0..=1.0).contains(&self.compaction_live_ratio) {
            return Err(ConfigError(
                "compaction_live_ratio must be between 0 and 1".into(),
            ));
        }
        Ok(())
    }
}

/// When the journal forces an add to disk before acknowledging it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalSync {
    /// `fdatasync` every group commit before acknowledging its adds (the default).
    Always,
    /// Never `fdatasync` the journal: acknowledged adds can be lost on power
    /// loss or a kernel crash. For tests and benchmarks only.
    NeverUnsafe,
}

impl JournalSync {
    /// The name used in config files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::NeverUnsafe => "never-unsafe",
        }
    }
}

impl fmt::Display for JournalSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JournalSync {
    type Err = ConfigError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "always" => Ok(Self::Always),
            "never-unsafe" => Ok(Self::NeverUnsafe),
            other => Err(ConfigError(format!(
                "journal_sync must be \"always\" or \"never-unsafe\", not {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        BookieConfig::default().validate().unwrap();
    }

    #[test]
    fn journal_sync_names_round_trip() {
        for sync in [JournalSync::Always, JournalSync::NeverUnsafe] {
            assert_eq!(sync.as_str().parse::<JournalSync>().unwrap(), sync);
        }
        assert!("never".parse::<JournalSync>().is_err());
    }

    #[test]
    fn pending_budget_must_hold_one_entry() {
        let config = BookieConfig {
            max_pending_add_bytes: 10,
            max_entry_bytes: 11,
            ..Default::default()
        };
        assert!(config.validate().is_err());
    }
}
