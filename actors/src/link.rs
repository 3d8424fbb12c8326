//! Bounded links between stages.
//!
//! ractor mailboxes are unbounded, so records never travel through them: a link is a
//! bounded channel of batches. A full link makes the sending stage wait, which is how
//! backpressure reaches the source.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

/// Counters of one link, read by the stage statistics.
#[derive(Debug, Default)]
pub struct LinkGauge {
    /// Batches waiting in the link.
    pub depth: AtomicUsize,
    /// Total nanoseconds senders spent waiting for room: the backpressure this link applied.
    pub blocked_ns: AtomicU64,
    pub capacity: AtomicUsize,
}

pub struct LinkSender<T> {
    tx: mpsc::Sender<Vec<T>>,
    gauge: Arc<LinkGauge>,
}

impl<T> Clone for LinkSender<T> {
    fn clone(&self) -> Self {
        LinkSender {
            tx: self.tx.clone(),
            gauge: self.gauge.clone(),
        }
    }
}

pub struct LinkReceiver<T> {
    rx: mpsc::Receiver<Vec<T>>,
    gauge: Arc<LinkGauge>,
}

/// The link is closed: the receiving stage has gone away.
#[derive(Debug, thiserror::Error)]
#[error("link closed")]
pub struct LinkClosed;

/// A bounded link holding at most `capacity` batches.
pub fn link<T>(capacity: usize) -> (LinkSender<T>, LinkReceiver<T>) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let gauge = Arc::new(LinkGauge::default());
    gauge.capacity.store(capacity, Ordering::Relaxed);
    (
        LinkSender {
            tx,
            gauge: gauge.clone(),
        },
        LinkReceiver { rx, gauge },
    )
}

impl<T> LinkSender<T> {
    /// Sends a batch, waiting while the link is full. Empty batches are not sent.
    pub async fn send(&self, batch: Vec<T>) -> Result<(), LinkClosed> {
        if batch.is_empty() {
            return Ok(());
        }
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(mpsc::error::TrySendError::Full(())) => {
                let started = Instant::now();
                let permit = self.tx.reserve().await.map_err(|_| LinkClosed)?;
                self.gauge
                    .blocked_ns
                    .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
                permit
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(LinkClosed),
        };
        self.gauge.depth.fetch_add(1, Ordering::Relaxed);
        permit.send(batch);
        Ok(())
    }

    pub fn gauge(&self) -> Arc<LinkGauge> {
        self.gauge.clone()
    }
}

impl<T> LinkReceiver<T> {
    /// The next batch, or `None` once every sender is gone and the link is empty.
    pub async fn recv(&mut self) -> Option<Vec<T>> {
        let batch = self.rx.recv().await?;
        self.gauge.depth.fetch_sub(1, Ordering::Relaxed);
        Some(batch)
    }

    pub fn gauge(&self) -> Arc<LinkGauge> {
        self.gauge.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_link_makes_the_sender_wait() {
        let (tx, mut rx) = link::<u32>(2);
        tx.send(vec![1]).await.unwrap();
        tx.send(vec![2]).await.unwrap();
        assert_eq!(rx.gauge().depth.load(Ordering::Relaxed), 2);
        let blocked = tokio::time::timeout(Duration::from_millis(100), tx.send(vec![3])).await;
        assert!(blocked.is_err(), "a third batch must wait for room");
        assert_eq!(rx.recv().await, Some(vec![1]));
        tx.send(vec![3]).await.unwrap();
        assert_eq!(rx.recv().await, Some(vec![2]));
        assert_eq!(rx.recv().await, Some(vec![3]));
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn empty_batches_are_not_sent() {
        let (tx, mut rx) = link::<u32>(1);
        tx.send(Vec::new()).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, None);
    }
}
