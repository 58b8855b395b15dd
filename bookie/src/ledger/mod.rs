//! The ledger client that gateways use: ensemble placement, pipelined quorum
//! writes with the last-add-confirmed rule, recovery, and reads with fallback.
