//! The bookie's storage engine: journal with group commit, rolling entry logs,
//! the RocksDB index, crash recovery, fencing, reads and garbage collection.
