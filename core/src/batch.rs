//! Group commit: concurrent requests to make something durable are gathered and committed
//! together, so many of them share one transaction (and one fsync, or one round trip).
//!
//! No timer is involved: a committer takes whatever is waiting when it is free (up to a
//! batch's size), so a lone request is committed at once, and under load each commit takes
//! everything that arrived during the last one. A batch runs to its end in the committer's own
//! task: a requester that goes away mid-way cannot cut a commit short.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};

/// Hands items to committers; cheap to clone.
pub struct GroupCommit<T, R> {
    tx: mpsc::Sender<(T, oneshot::Sender<R>)>,
}

impl<T, R> Clone for GroupCommit<T, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T, R> Debug for GroupCommit<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("waiting", &(self.tx.max_capacity() - self.tx.capacity()))
            .finish_non_exhaustive()
    }
}

/// The committers have stopped (the runtime is shutting down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the committer has stopped")]
pub struct Stopped;

impl<T: Send + 'static, R: Send + 'static> GroupCommit<T, R> {
    /// Starts `committers` tasks on the current Tokio runtime. Each takes up to `max_batch`
    /// waiting items at a time and passes them to `commit`, which returns one answer per item,
    /// in order. At most `capacity` items wait; [`Self::submit`] waits for room beyond that.
    ///
    /// The committers stop once every handle is dropped and what was submitted is committed.
    pub fn start<F, Fut>(capacity: usize, max_batch: usize, committers: usize, commit: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send,
    {
        let (tx, rx) = mpsc::channel::<(T, oneshot::Sender<R>)>(capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        let commit = Arc::new(commit);
        let max_batch = max_batch.max(1);
        for _ in 0..committers.max(1) {
            let (rx, commit) = (rx.clone(), commit.clone());
            tokio::spawn(async move {
                let mut items = Vec::with_capacity(max_batch);
                let mut replies = Vec::with_capacity(max_batch);
                loop {
                    {
                        // One committer gathers at a time; the others commit meanwhile.
                        let mut rx = rx.lock().await;
                        if rx.recv_many(&mut items, max_batch).await == 0 {
                            return;
                        }
                    }
                    let batch: Vec<T> = items
                        .drain(..)
                        .map(|(item, reply)| {
                            replies.push(reply);
                            item
                        })
                        .collect();
                    let answers = commit(batch).await;
                    debug_assert_eq!(answers.len(), replies.len(), "one answer per item");
                    for (reply, answer) in replies.drain(..).zip(answers) {
                        // The requester may have gone: what it asked for is done all the same.
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Self { tx }
    }

    /// Items waiting for a committer.
    pub fn waiting(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Hands `item` to a committer and waits for its answer.
    pub async fn submit(&self, item: T) -> Result<R, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn each_item_gets_its_own_answer_and_waiting_items_share_a_commit() {
        let commits = Arc::new(AtomicUsize::new(0));
        let counted = commits.clone();
        let (release, released) = tokio::sync::watch::channel(false);
        let group = GroupCommit::start(1024, 64, 1, move |batch: Vec<u32>| {
            let (counted, mut released) = (counted.clone(), released.clone());
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                // The first commit is held until every other item is waiting.
                let _ = released.wait_for(|r| *r).await;
                batch.into_iter().map(|n| n * 2).collect::<Vec<_>>()
            }
        });
        let first = tokio::spawn({
            let group = group.clone();
            async move { group.submit(0).await }
        });
        while commits.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (1..=100)
            .map(|n| {
                let group = group.clone();
                tokio::spawn(async move { group.submit(n).await })
            })
            .collect();
        // Let all of them queue up behind the held commit.
        while group.waiting() < 100 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(0));
        for (n, task) in (1..=100).zip(rest) {
            assert_eq!(task.await.unwrap(), Ok(n * 2));
        }
        // One for the first, then 100 waiting items in batches of at most 64.
        assert_eq!(commits.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_commit_runs_to_its_end_when_its_requester_goes_away() {
        let entered = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (seen, counted) = (entered.clone(), done.clone());
        let (release, released) = tokio::sync::watch::channel(false);
        let group = GroupCommit::start(8, 8, 1, move |batch: Vec<()>| {
            let (seen, counted, mut released) = (seen.clone(), counted.clone(), released.clone());
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = released.wait_for(|r| *r).await;
                counted.fetch_add(batch.len(), Ordering::SeqCst);
                vec![(); batch.len()]
            }
        });
        let gone = tokio::spawn({
            let group = group.clone();
            async move { group.submit(()).await }
        });
        while entered.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        gone.abort();
        release.send(true).unwrap();
        // A later item is answered only after the earlier commit finished.
        assert_eq!(group.submit(()).await, Ok(()));
        assert_eq!(done.load(Ordering::SeqCst), 2);
    }
}
