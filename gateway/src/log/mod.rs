//! The partition log as the gateway sees it: record batches checked and
//! placed at their offsets.

pub mod batch;
pub mod time_lookup;
