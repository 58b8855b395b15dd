//! Tiered storage building blocks: sealed segments uploaded to an object
//! store as one object each, and read back with ranged GETs.
//!
//! - [`object`]: the segment object format (batches as stored, a footer with
//!   a sparse offset/timestamp index, a fixed-size trailer).
//! - [`store`]: the object store configuration, the store it builds, and
//!   segment object keys.
//! - [`upload`]: streaming a segment's batches into one object (single put or
//!   multipart upload).
//! - [`rate`]: the bandwidth limit all uploads share.
//! - [`reader`]: reading batches back through cached footers and blocks.
//! - [`maintenance`]: the loop that applies retention, offloads segments and
//!   deletes the objects of deleted segments.

pub mod maintenance;
pub mod object;
pub mod rate;
pub mod reader;
pub mod store;
pub mod upload;

#[cfg(test)]
mod test_support;
