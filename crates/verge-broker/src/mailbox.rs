//! A connection's bounded delivery queue: the router pushes, the connection
//! takes in batches. It allocates nothing until the first message, which
//! keeps idle connections small (a tokio channel allocates a block of slots
//! up front).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use crate::delivery::Delivery;

/// Why a push failed; the delivery comes back.
#[derive(Debug)]
pub(crate) enum PushError {
    /// The queue holds `capacity` deliveries.
    Full(Delivery),
    /// The connection has ended.
    Closed(Delivery),
}

/// Bounded multi-producer, single-consumer queue of deliveries.
#[derive(Debug)]
pub(crate) struct Mailbox {
    queue: Mutex<VecDeque<Delivery>>,
    capacity: usize,
    closed: AtomicBool,
    /// Signalled when deliveries arrive.
    data: Notify,
    /// Signalled when the consumer makes room.
    space: Notify,
}

impl Mailbox {
    pub fn new(capacity: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            closed: AtomicBool::new(false),
            data: Notify::new(),
            space: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Delivery>> {
        // A panic while holding the lock cannot leave the queue inconsistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Free slots now.
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.lock().len())
    }

    /// The bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Push without waiting.
    pub fn try_push(&self, d: Delivery) -> Result<(), PushError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed(d));
        }
        {
            let mut q = self.lock();
            if q.len() >= self.capacity {
                return Err(PushError::Full(d));
            }
            q.push_back(d);
        }
        self.data.notify_one();
        Ok(())
    }

    /// Push, waiting up to `wait` for room. `Full` after the wait.
    pub async fn push_wait(&self, mut d: Delivery, wait: Duration) -> Result<(), PushError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.try_push(d) {
                Err(PushError::Full(back)) => d = back,
                other => return other,
            }
            if tokio::time::timeout_at(deadline, space).await.is_err() {
                return self.try_push(d);
            }
        }
    }

    /// Move up to `max` deliveries into `out`, waiting for at least one.
    /// Returns 0 once the mailbox is closed and empty.
    pub async fn recv_many(&self, out: &mut Vec<Delivery>, max: usize) -> usize {
        loop {
            let data = self.data.notified();
            tokio::pin!(data);
            data.as_mut().enable();
            {
                let mut q = self.lock();
                let n = q.len().min(max);
                if n > 0 {
                    out.extend(q.drain(..n));
                    drop(q);
                    self.space.notify_one();
                    return n;
                }
            }
            if self.closed.load(Ordering::Acquire) {
                return 0;
            }
            data.await;
        }
    }

    /// Refuse further pushes and take what is queued.
    pub fn close(&self) -> VecDeque<Delivery> {
        self.closed.store(true, Ordering::Release);
        self.data.notify_one();
        self.space.notify_one();
        std::mem::take(&mut *self.lock())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use verge_mqtt::QoS;

    use super::*;
    use crate::message::Message;

    fn d(n: u8) -> Delivery {
        Delivery {
            msg: Arc::new(Message::local("t", vec![n], QoS::AtLeastOnce, false)),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
        }
    }

    #[tokio::test]
    async fn bounded_ordered_and_closable() {
        let m = Mailbox::new(2);
        assert!(m.try_push(d(1)).is_ok());
        assert!(m.try_push(d(2)).is_ok());
        assert!(matches!(m.try_push(d(3)), Err(PushError::Full(_))));
        let mut out = Vec::new();
        assert_eq!(m.recv_many(&mut out, 10).await, 2);
        assert_eq!(
            out.iter().map(|x| x.msg.payload[0]).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(m.try_push(d(4)).is_ok());
        let left = m.close();
        assert_eq!(left.len(), 1);
        assert!(matches!(m.try_push(d(5)), Err(PushError::Closed(_))));
        assert_eq!(m.recv_many(&mut out, 10).await, 0);
    }

    #[tokio::test]
    async fn push_wait_gets_room_when_the_consumer_drains() {
        let m = Arc::new(Mailbox::new(1));
        m.try_push(d(1)).expect("room");
        let consumer = m.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut out = Vec::new();
            consumer.recv_many(&mut out, 1).await;
        });
        assert!(m.push_wait(d(2), Duration::from_secs(5)).await.is_ok());
    }

    #[tokio::test]
    async fn push_wait_gives_up_after_the_wait() {
        let m = Mailbox::new(1);
        m.try_push(d(1)).expect("room");
        let t = Instant::now();
        assert!(matches!(
            m.push_wait(d(2), Duration::from_millis(50)).await,
            Err(PushError::Full(_))
        ));
        assert!(t.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn consumer_wakes_on_push() {
        let m = Arc::new(Mailbox::new(4));
        let producer = m.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            producer.try_push(d(9)).expect("room");
        });
        let mut out = Vec::new();
        assert_eq!(m.recv_many(&mut out, 4).await, 1);
    }
}
