//! Log output: readable text by default, JSON lines on request; `RUST_LOG` filters.

use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber, writing to stderr.
pub fn init(json: bool) {
    // Raft's own progress lines are many and routine; its warnings still show.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
