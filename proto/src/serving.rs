//! Stopping a gRPC server within a bound.
//!
//! tonic's graceful shutdown waits for every open connection to close. A client
//! that is frozen (SIGSTOP, a hung host) never closes its end, so a server asked
//! to stop would wait for ever. [`serve_until_deadline`] gives the graceful phase
//! a deadline and then drops the remaining connections.

use std::future::Future;
use std::time::Duration;

/// How long a stopping server waits for its clients to hang up before it drops them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Drives `server` (a tonic `serve_with_*_shutdown` future that stops on
/// `stopping`) to completion, but returns at most `grace` after `stopping`
/// fires, dropping whatever connections are still open.
pub async fn serve_until_deadline<S, E>(
    server: S,
    stopping: impl Future<Output = ()>,
    grace: Duration,
) -> Result<(), E>
where
    S: Future<Output = Result<(), E>>,
{
    tokio::pin!(server);
    let deadline = async {
        stopping.await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = &mut server => result,
        () = deadline => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "clients did not hang up in time; dropping their connections"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_drains_is_dropped_after_the_grace() {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let never_drains = std::future::pending::<Result<(), ()>>();
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.send(()).unwrap();
        });
        let stopping = async {
            let _ = stopped.await;
        };
        serve_until_deadline(never_drains, stopping, Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_that_finishes_returns_its_own_result() {
        let finished = async { Err::<(), &str>("bind failed") };
        let result =
            serve_until_deadline(finished, std::future::pending(), Duration::from_secs(2)).await;
        assert_eq!(result, Err("bind failed"));
    }
}
