//! Bookies: the storage tier of Strata, and the ledger client that writes to it.
//!
//! This crate owns the bookie server (journal with group commit, entry logs,
//! the RocksDB index of entries and per-segment state, the gRPC
//! `BookieService`, registration with metadata), the ledger client that
//! gateways use for quorum writes, reads, fencing and recovery, and
//! auto-recovery, which re-replicates sealed segments that lost a replica with
//! a dead bookie.

pub mod autorecovery;
pub mod config;
pub mod ledger;
pub mod server;
pub mod service;
pub mod storage;

pub use config::BookieConfig;
pub use server::Bookie;
