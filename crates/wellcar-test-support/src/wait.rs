//! Waiting on conditions.
//!
//! Contract: a test waits for something it can observe (a file, a state, an answer), polling
//! every [`POLL`] until it holds, and fails with a message naming what never happened once the
//! deadline passes. It never sleeps a fixed time hoping that something happened meanwhile.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `probe` until it returns `Some`, and returns that. Fails the test ("timed out after
/// … waiting for `what`") if `timeout` passes first. Blocks the thread: from async code, use
/// [`wait_until_async`].
pub fn wait_until<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] for async probes, yielding to the runtime between polls.
pub async fn wait_until_async<T, F>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> F,
) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn returns_once_the_condition_holds() {
        let mut polls = 0;
        let v = wait_until("the third poll", Duration::from_secs(5), || {
            polls += 1;
            (polls == 3).then_some("done")
        });
        assert_eq!((v, polls), ("done", 3));
    }

    #[test]
    fn fails_naming_what_never_happened() {
        let started = Instant::now();
        let err = std::panic::catch_unwind(|| {
            wait_until("a miracle", Duration::from_millis(50), || None::<()>)
        })
        .unwrap_err();
        let message = err.downcast_ref::<String>().unwrap();
        assert_eq!(message, "timed out after 50ms waiting for a miracle");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn async_probes_are_polled_until_they_hold() {
        let polls = AtomicU32::new(0);
        let n = wait_until_async("two polls", Duration::from_secs(5), || async {
            let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
            (n == 2).then_some(n)
        })
        .await;
        assert_eq!(n, 2);
    }
}
