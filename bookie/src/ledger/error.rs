//! The one error type of the ledger client.

/// Why a ledger operation (placement, write, read, recovery) failed.
///
/// It is `Clone` because one writer failure is handed to every pending add.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// Ensemble size and quorums do not fit together (`1 <= Qa <= Qw <= E <= 64`,
    /// distinct bookies).
    #[error("invalid ledger layout: {0}")]
    InvalidLayout(String),
    /// Placement found fewer eligible bookies than the ensemble needs.
    #[error(
        "cannot place an ensemble of {needed} bookies: only {available} live bookies are eligible"
    )]
    NotEnoughBookies {
        /// The ensemble size asked for.
        needed: usize,
        /// Live, not excluded bookies.
        available: usize,
    },
    /// A segment's ensemble names a bookie the cluster cache does not know.
    #[error("segment {segment_id}: bookie {node_id} of its ensemble is not registered")]
    UnknownBookie {
        /// The segment.
        segment_id: u64,
        /// The bookie's node id.
        node_id: i32,
    },
    /// A bookie address is not a valid gRPC endpoint.
    #[error("invalid bookie address {addr:?}: {reason}")]
    BadAddress {
        /// The address as given.
        addr: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Too many bookies failed: an entry can no longer be acked by its ack quorum.
    /// The owner should seal the segment (by recovery) and roll to a new ensemble.
    #[error(
        "segment {segment_id}: entry {entry_id} can no longer reach its ack quorum of {ack_quorum}; \
         failed bookies: {failed}"
    )]
    QuorumLost {
        /// The segment.
        segment_id: u64,
        /// The first entry that cannot be confirmed.
        entry_id: i64,
        /// Qa.
        ack_quorum: usize,
        /// The failed bookies and why each failed.
        failed: String,
    },
    /// A bookie refused the writer's epoch: a newer owner fenced the segment.
    #[error("segment {segment_id} was fenced by a newer owner (reported by bookie {bookie}): this writer must stop")]
    Fenced {
        /// The segment.
        segment_id: u64,
        /// The bookie that refused.
        bookie: String,
    },
    /// A bookie refused an add because the segment is sealed.
    #[error("segment {segment_id} is sealed (reported by bookie {bookie}): no more adds")]
    Sealed {
        /// The segment.
        segment_id: u64,
        /// The bookie that refused.
        bookie: String,
    },
    /// The writer was closed or dropped before the add was confirmed.
    #[error("the writer of segment {segment_id} is closed")]
    WriterClosed {
        /// The segment.
        segment_id: u64,
    },
    /// No replica holds the entry asked for (or it is past what may be read yet).
    #[error("segment {segment_id}: no replica has entry {entry_id}")]
    NoSuchEntry {
        /// The segment.
        segment_id: u64,
        /// The entry (or `-1` when reading by Kafka offset).
        entry_id: i64,
    },
    /// Every replica that may hold an entry failed to serve it.
    #[error("segment {segment_id}: no replica could serve entry {entry_id}: {reasons}")]
    ReadFailed {
        /// The segment.
        segment_id: u64,
        /// The entry (or `-1` when reading by Kafka offset).
        entry_id: i64,
        /// What each replica answered.
        reasons: String,
    },
    /// Recovery could not hear from enough bookies to decide safely; retry later.
    #[error("segment {segment_id}: recovery cannot finish: {reason}")]
    RecoveryIncomplete {
        /// The segment.
        segment_id: u64,
        /// What was missing.
        reason: String,
    },
    /// The writer could not seal the segment on enough bookies when closing.
    #[error("segment {segment_id}: sealed on {sealed} bookies, need {needed}: {reasons}")]
    SealFailed {
        /// The segment.
        segment_id: u64,
        /// Bookies that sealed.
        sealed: usize,
        /// Bookies that must seal.
        needed: usize,
        /// What the others answered.
        reasons: String,
    },
}

impl LedgerError {
    /// Whether another owner has taken the segment over (fenced or sealed it),
    /// so this owner must stop serving the partition rather than roll.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            LedgerError::Fenced { .. } | LedgerError::Sealed { .. }
        )
    }
}
