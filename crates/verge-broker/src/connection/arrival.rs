//! When a read's bytes reached the broker's socket.
//!
//! Every connection is its own task, so two sockets that become readable
//! together are read in an order of the runtime's choosing (tokio runs the
//! task woken last first, and another worker may steal the other one): a
//! PUBLISH may be read and routed before a SUBSCRIBE that reached another
//! socket earlier has been read at all.
//!
//! [`Stamped`] wraps a connection's stream and notes the moment the I/O
//! driver wakes its reader: the readiness events of one poll are handled in
//! the order the kernel queued them, so these moments order arrivals across
//! sockets. A read that did not have to wait found bytes that came while
//! its connection was busy and not listening, some time between the return
//! of the previous read and its own: a SUBSCRIBE in it counts from the
//! earliest of these moments, a PUBLISH from the latest. So when the broker
//! cannot tell which of a SUBSCRIBE and a PUBLISH came first, the
//! subscription gets the message; a subscription may get a message that
//! came up to that span before it. Stamps a few microseconds apart count as
//! simultaneous ([`TIE`]).
//! Each PUBLISH carries its read's stamp as `Message::received`, each
//! SUBSCRIBE its own; the router gives a new subscription the messages it
//! routed just before whose stamps are later than the SUBSCRIBE's (see
//! `router::recent`). Nobody waits: the cost is a clock read per wake and
//! two atomic operations per read.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The moment every stamp counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn to_nanos(t: Instant) -> u64 {
    // Never 0: 0 means "no wake noted".
    (t.saturating_duration_since(epoch()).as_nanos() as u64).max(1)
}

/// The reader's waker, stamping each wake before passing it on.
#[derive(Default)]
struct WakeStamp {
    task: AtomicWaker,
    /// Nanoseconds after [`epoch`] of the last wake not yet taken; 0 if none.
    at: AtomicU64,
}

impl Wake for WakeStamp {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.at.store(to_nanos(Instant::now()), Ordering::Release);
        self.task.wake();
    }
}

/// Arrivals this close are taken as simultaneous: the kernel may hand two
/// sockets' bytes to the I/O driver a few microseconds out of the order the
/// peers sent them (one socket's input waits while its lock is held), so a
/// SUBSCRIBE counts from this much before its stamp.
const TIE: Duration = Duration::from_micros(200);

/// When a read's bytes reached the socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    /// What a SUBSCRIBE in the read counts from ([`TIE`] before the
    /// earliest moment).
    pub earliest: Instant,
    /// What a PUBLISH in the read counts from.
    pub latest: Instant,
}

impl Arrival {
    pub fn now() -> Arrival {
        let now = Instant::now();
        Arrival {
            earliest: now,
            latest: now,
        }
    }
}

/// A stream whose reads know when their bytes arrived.
pub(crate) struct Stamped<S> {
    inner: S,
    stamp: Arc<WakeStamp>,
    /// `stamp` as a waker, made once.
    waker: Waker,
    /// When the last read returned.
    returned: Instant,
    /// When the read before it returned: since then the stream had no
    /// waker with the I/O driver until it was polled again.
    since: Instant,
}

impl<S> Stamped<S> {
    pub fn new(inner: S) -> Stamped<S> {
        let _ = epoch();
        let stamp = Arc::new(WakeStamp::default());
        let waker = Waker::from(stamp.clone());
        let now = Instant::now();
        Stamped {
            inner,
            stamp,
            waker,
            returned: now,
            since: now,
        }
    }

    /// When the bytes of the read that just returned arrived, as the
    /// earliest and the latest moment they can have: when the reader was
    /// woken for them (both); if it did not wait, they came while the
    /// connection was busy, after its previous read returned (unless that
    /// one left some unread) and before this one did.
    pub fn arrival(&self) -> Arrival {
        match self.stamp.at.swap(0, Ordering::AcqRel) {
            0 => Arrival {
                earliest: self.since.checked_sub(TIE).unwrap_or(self.since),
                latest: self.returned,
            },
            n => {
                let at = epoch() + Duration::from_nanos(n);
                Arrival {
                    earliest: at.checked_sub(TIE).unwrap_or(at),
                    latest: at,
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Stamped<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.stamp.task.register(cx.waker());
        let mut stamping = Context::from_waker(&this.waker);
        let r = Pin::new(&mut this.inner).poll_read(&mut stamping, buf);
        if r.is_ready() {
            this.since = std::mem::replace(&mut this.returned, Instant::now());
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Stamped<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_read_that_waited_is_stamped_when_its_bytes_came() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Stamped::new(a);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            let n = a.read(&mut buf).await.unwrap();
            let done = Instant::now();
            (n, a, done)
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let sent = Instant::now();
        b.write_all(b"ping").await.unwrap();
        let (n, a, done) = reader.await.unwrap();
        assert_eq!(n, 4);
        let arrived = a.arrival();
        assert_eq!(arrived.earliest + TIE, arrived.latest);
        let arrived = arrived.latest;
        assert!(
            arrived >= sent && arrived <= done,
            "{arrived:?} not in {sent:?}..{done:?}"
        );
        // Taken once.
        assert_eq!(a.stamp.at.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn a_read_that_did_not_wait_is_stamped_when_the_previous_returned() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = Stamped::new(a);
        b.write_all(b"one").await.unwrap();
        let mut buf = [0u8; 3];
        let first_polled = Instant::now();
        a.read_exact(&mut buf).await.unwrap();
        let first = a.arrival();
        let first_returned = Instant::now();
        // It did not wait either: its bytes came before it returned.
        assert!(first.latest >= first_polled && first.latest <= first_returned);
        // Busy: the bytes come while nobody polls the read.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        b.write_all(b"two").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let second_polled = Instant::now();
        a.read_exact(&mut buf).await.unwrap();
        let second = a.arrival();
        let earliest = second.earliest + TIE;
        assert!(
            earliest >= first_polled && earliest <= first_returned,
            "{second:?}"
        );
        assert!(second.latest >= second_polled, "{second:?}");
    }
}
