//! The ledger client that gateways use: ensemble placement, pipelined quorum
//! writes with the last-add-confirmed rule, recovery, and reads with fallback.
//!
//! - [`placement`]: choose the E bookies of a new segment (zones, free space).
//! - [`spec`]: a segment's layout ([`LedgerSpec`]) and striping ([`WriteSet`]).
//! - [`lac`]: the pure LAC rule ([`LacTracker`]).
//! - [`writer`]: [`LedgerWriter`], the single writer of an open segment.
//! - [`recovery`]: [`recover`], fencing and closing a previous writer's segment.
//! - [`reader`]: [`LedgerReader`], reads from any replica.
//! - [`pool`]: [`BookiePool`], one lazily connected channel per bookie.
//!
//! Every operation fails with the one [`LedgerError`].

pub mod error;
pub mod lac;
pub mod options;
pub mod placement;
pub mod pool;
pub mod reader;
pub mod recovery;
pub mod spec;
pub mod writer;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use error::LedgerError;
pub use lac::LacTracker;
pub use options::LedgerOptions;
pub use placement::{choose_ensemble, choose_ensemble_from_cache};
pub use pool::BookiePool;
pub use reader::{LedgerReader, ReadBatch};
pub use recovery::{recover, RecoveryOutcome};
pub use spec::{LedgerSpec, WriteSet, MAX_ENSEMBLE_SIZE, NO_ENTRY};
pub use writer::{LedgerWriter, PendingAdd, ENTRY_OVERHEAD_BYTES};
