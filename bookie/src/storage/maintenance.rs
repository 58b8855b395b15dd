//! The storage's periodic work, as tasks that stop with the bookie:
//! checkpoints, free-space measurements and garbage collection. Each runs its
//! disk work on the blocking pool, never on a runtime worker.

use super::gc::{GarbageCollector, SegmentFate};
use super::Storage;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Takes a checkpoint every `period` until `shutdown`.
pub async fn run_checkpoints(storage: Arc<Storage>, period: Duration, shutdown: CancellationToken) {
    every(period, &shutdown, || {
        let storage = Arc::clone(&storage);
        async move {
            match tokio::task::spawn_blocking(move || storage.checkpoint()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::error!(%error, "bookie checkpoint failed"),
                Err(error) => tracing::error!(%error, "bookie checkpoint panicked"),
            }
        }
    })
    .await;
}

/// Measures the data disk's free space every `period` until `shutdown`.
pub async fn watch_free_space(
    storage: Arc<Storage>,
    period: Duration,
    shutdown: CancellationToken,
) {
    every(period, &shutdown, || {
        let storage = Arc::clone(&storage);
        async move {
            if let Err(error) =
                tokio::task::spawn_blocking(move || storage.refresh_free_space()).await
            {
                tracing::error!(%error, "free-space check panicked");
            }
        }
    })
    .await;
}

/// Runs a garbage-collection pass every `period` until `shutdown`, asking
/// `fate` what metadata says of each segment.
pub async fn run_gc<F>(
    storage: Arc<Storage>,
    collector: GarbageCollector,
    fate: F,
    period: Duration,
    shutdown: CancellationToken,
) where
    F: Fn(u64) -> SegmentFate + Clone + Send + 'static,
{
    // The collector moves to the blocking pool for each pass and comes back.
    let collector = Arc::new(std::sync::Mutex::new(collector));
    every(period, &shutdown, || {
        let storage = Arc::clone(&storage);
        let collector = Arc::clone(&collector);
        let fate = fate.clone();
        async move {
            let pass = tokio::task::spawn_blocking(move || {
                let mut collector = collector.lock().unwrap_or_else(|e| e.into_inner());
                collector.run_once(&storage, fate, Instant::now())
            });
            match pass.await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => tracing::error!(%error, "bookie garbage collection failed"),
                Err(error) => tracing::error!(%error, "bookie garbage collection panicked"),
            }
        }
    })
    .await;
}

/// Runs `work` every `period` (first after one period) until `shutdown`;
/// a slow run delays the next rather than piling up.
async fn every<W, Fut>(period: Duration, shutdown: &CancellationToken, mut work: W)
where
    W: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => work().await,
        }
    }
}
