//! The evaluation pool: a fixed number of threads (`limits.evaluation_threads`)
//! that run Cedar evaluation, so that a slow request never stalls the async
//! workers that answer health checks, the admin listener and every other
//! call. Its queue is bounded by admission (`limits.max_in_flight`); work
//! that waited past its deadline is refused where it is picked up, so the
//! deadline holds for queued work too.
//!
//! crossbeam-channel gives the many-consumer queue the threads share; std's
//! channel has one consumer only.

use std::panic::AssertUnwindSafe;

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Why work did not run on the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum PoolError {
    #[error("the evaluation queue is full")]
    Full,
    #[error("evaluation stopped before it answered")]
    Lost,
}

/// A fixed set of evaluation threads; they end when the pool is dropped.
#[derive(Debug)]
pub(super) struct EvalPool {
    tx: Sender<Job>,
}

impl EvalPool {
    /// `threads` threads (0: one per CPU the process may use) behind a
    /// queue of `queue` jobs.
    pub(super) fn new(threads: usize, queue: usize) -> std::io::Result<Self> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue.max(1));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("cedar-eval-{i}"))
                .spawn(move || {
                    for job in rx {
                        // A panic loses that job's answer (the caller sees
                        // `Lost`, an internal error), never the thread.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })?;
        }
        Ok(Self { tx })
    }

    /// Queues `job`; when the queue cannot take it, it is dropped here.
    pub(super) fn spawn(&self, job: Job) -> Result<(), PoolError> {
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => PoolError::Full,
            TrySendError::Disconnected(_) => PoolError::Lost,
        })
    }

    /// Runs `work` on a pool thread and waits for its result.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PoolError> {
        let (tx, rx) = oneshot::channel();
        self.spawn(Box::new(move || {
            let _ = tx.send(work());
        }))?;
        rx.await.map_err(|_| PoolError::Lost)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "tests")]
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Polls `done` until it holds, for at most five seconds.
    async fn until(mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_stuck_job_leaves_the_runtime_free_and_the_queue_bounded() {
        let pool = Arc::new(EvalPool::new(1, 1).unwrap());
        let (started, running) = std::sync::mpsc::channel::<()>();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let stuck = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move {
                pool.run(move || {
                    started.send(()).unwrap();
                    let _ = wait.recv();
                    1
                })
                .await
            }
        });
        // The one runtime thread keeps running tasks while the job blocks.
        until(|| running.try_recv().is_ok()).await;
        let queued = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.run(|| 3).await }
        });
        until(|| pool.tx.is_full()).await;
        assert_eq!(pool.run(|| 4).await, Err(PoolError::Full));
        release.send(()).unwrap();
        assert_eq!(stuck.await.unwrap(), Ok(1));
        assert_eq!(queued.await.unwrap(), Ok(3));
    }

    #[tokio::test]
    async fn a_panicking_job_is_lost_but_the_thread_lives() {
        let pool = EvalPool::new(1, 4).unwrap();
        assert_eq!(
            pool.run(|| panic!("boom")).await,
            Err::<(), _>(PoolError::Lost)
        );
        assert_eq!(pool.run(|| 5).await, Ok(5));
    }
}
