//! CoAP over DTLS 1.2 (RFC 7252 §9, `coaps://`): the table of sessions by
//! peer address that the run loop drives. DTLS records come in from the
//! socket, CoAP datagrams come out (and the other way round); the CoAP
//! exchange handling above is the same as for plain UDP.
//!
//! Each session is an OpenSSL `SSL` over an in-memory channel (one inbound
//! datagram at a time, outbound datagrams collected and sent by the loop),
//! so one task serves every peer without a socket per peer. A new address
//! gets a session only for a datagram that looks like a ClientHello, within
//! `max_sessions` and `max_handshakes`; the HelloVerifyRequest cookie keeps
//! the gateway from answering a spoofed address with more than a small
//! datagram, and an unfinished handshake is dropped after
//! `handshake_timeout`. Failures are counted and logged at debug, with at
//! most one warning per [`WARN_EVERY`].

mod context;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::ssl::{ErrorCode, SslStream};
use tokio::net::UdpSocket;
use tracing::{debug, warn};

pub(crate) use context::DtlsContext;

use crate::config::DtlsConfig;
use crate::stats::Stats;

/// Least time between two warnings about failed handshakes.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// DTLS record content type of a handshake message.
const HANDSHAKE: u8 = 22;
/// Length of a DTLS record header.
const RECORD_HEADER: usize = 13;

/// The datagrams between one OpenSSL DTLS session and a UDP socket the
/// caller owns: what the socket received goes into `inbound`, what the
/// session wrote comes out of `outbound`, one datagram per write. The
/// gateway's sessions use it, and so can a DTLS client (the tests' does).
#[derive(Debug, Default)]
pub struct Channel {
    /// The datagram OpenSSL reads next (one read takes it whole).
    pub inbound: Option<Vec<u8>>,
    /// Datagrams OpenSSL wrote (one per write), for the caller to send.
    pub outbound: Vec<Vec<u8>>,
}

impl Read for Channel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbound.take() {
            Some(d) => {
                let n = d.len().min(buf.len());
                buf[..n].copy_from_slice(&d[..n]);
                Ok(n)
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Channel {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outbound.push(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where a session is.
enum State {
    /// Handshake running since then.
    Handshaking(Instant),
    /// Handshake done; the PSK identity or certificate name the device
    /// proved.
    Established(Arc<str>),
}

/// One peer's DTLS session.
struct Session {
    /// OpenSSL's session over the in-memory channel.
    stream: SslStream<Channel>,
    /// Handshaking or established.
    state: State,
    /// Last datagram either way (idle expiry).
    last_seen: Instant,
}

/// Every DTLS session of one listener.
pub(crate) struct Sessions {
    /// The server context new sessions are made from.
    ctx: Arc<DtlsContext>,
    /// Sessions by peer address (at most `max_sessions`).
    map: HashMap<SocketAddr, Session>,
    /// How many of them are handshaking (at most `max_handshakes`).
    handshaking: usize,
    /// `coap.dtls.handshake_timeout`.
    handshake_timeout: Duration,
    /// `coap.dtls.idle_timeout`.
    idle_timeout: Duration,
    /// `coap.dtls.max_sessions`.
    max_sessions: usize,
    /// `coap.dtls.max_handshakes`.
    max_handshakes: usize,
    /// The gateway's counters.
    stats: Arc<Stats>,
    /// Failures and refusals since the last warning.
    failures: u64,
    /// When the last warning was logged.
    warned: Option<Instant>,
    /// Buffer for decrypted datagrams (reused).
    plain: Vec<u8>,
}

impl Sessions {
    /// No sessions yet; bounds and timeouts from `cfg`.
    pub fn new(ctx: Arc<DtlsContext>, cfg: &DtlsConfig, stats: Arc<Stats>) -> Sessions {
        Sessions {
            ctx,
            map: HashMap::new(),
            handshaking: 0,
            handshake_timeout: cfg.handshake_timeout.get(),
            idle_timeout: cfg.idle_timeout.get(),
            max_sessions: cfg.max_sessions,
            max_handshakes: cfg.max_handshakes,
            stats,
            failures: 0,
            warned: None,
            plain: vec![0u8; 65_536],
        }
    }

    /// The identity `peer` proved, if it has an established session.
    pub fn identity(&self, peer: SocketAddr) -> Option<Arc<str>> {
        match &self.map.get(&peer)?.state {
            State::Established(id) => Some(id.clone()),
            State::Handshaking(_) => None,
        }
    }

    /// One datagram from `peer`: advance its handshake or decrypt it. The
    /// CoAP datagrams it carried are appended to `out`. Returns true when
    /// an established session of `peer` ended (its observers go with it).
    pub fn receive(
        &mut self,
        socket: &UdpSocket,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
        out: &mut Vec<Vec<u8>>,
    ) -> bool {
        if data.len() < RECORD_HEADER {
            Stats::inc(&self.stats.dtls_dropped);
            debug!(%peer, "coaps: datagram shorter than a dtls record header dropped");
            return false;
        }
        if !plausible(data) {
            Stats::inc(&self.stats.dtls_dropped);
            debug!(%peer, "coaps: datagram that is not a sequence of dtls records dropped");
            return false;
        }
        let hello = data[0] == HANDSHAKE && data[3] == 0 && data[4] == 0;
        let mut ended = false;
        if hello && self.identity(peer).is_some() {
            // A new ClientHello (epoch 0) from an established peer: the
            // device restarted and lost its side of the session.
            debug!(%peer, "coaps: new handshake replaces the session");
            self.remove(peer, true);
            ended = true;
        }
        if !self.map.contains_key(&peer) && !self.open(peer, hello, now) {
            return ended;
        }
        let Some(s) = self.map.get_mut(&peer) else {
            return ended;
        };
        s.last_seen = now;
        s.stream.get_mut().inbound = Some(data.to_vec());
        if let State::Handshaking(_) = s.state {
            match s.stream.accept() {
                Ok(()) => {
                    let Some(id) = context::identity(s.stream.ssl()) else {
                        let _ = s.stream.shutdown();
                        flush(socket, peer, &mut s.stream, &self.stats);
                        self.fail(peer, "certificate without a common name", now);
                        return ended;
                    };
                    let id = Arc::<str>::from(id);
                    debug!(%peer, identity = %id, "coaps: handshake done");
                    s.state = State::Established(id);
                    self.handshaking -= 1;
                    Stats::inc(&self.stats.dtls_handshakes);
                    Stats::inc(&self.stats.dtls_sessions);
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    flush(socket, peer, &mut s.stream, &self.stats);
                    return ended;
                }
                Err(e) => {
                    flush(socket, peer, &mut s.stream, &self.stats);
                    self.fail(peer, &format!("handshake failed: {e}"), now);
                    return ended;
                }
            }
        }
        loop {
            match s.stream.ssl_read(&mut self.plain) {
                Ok(n) => out.push(self.plain[..n].to_vec()),
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                    debug!(%peer, "coaps: peer closed the session");
                    let _ = s.stream.shutdown();
                    flush(socket, peer, &mut s.stream, &self.stats);
                    self.remove(peer, true);
                    return true;
                }
                Err(e) => {
                    // A record that fails to decrypt is dropped by DTLS
                    // itself; an error here ends the session.
                    Stats::inc(&self.stats.dtls_dropped);
                    debug!(%peer, "coaps: session error: {e}");
                    flush(socket, peer, &mut s.stream, &self.stats);
                    self.remove(peer, true);
                    return true;
                }
            }
        }
        flush(socket, peer, &mut s.stream, &self.stats);
        ended
    }

    /// A session for a new peer, if its datagram may start one and there is
    /// room.
    fn open(&mut self, peer: SocketAddr, hello: bool, now: Instant) -> bool {
        if !hello {
            Stats::inc(&self.stats.dtls_dropped);
            debug!(%peer, "coaps: datagram from an address without a session dropped");
            return false;
        }
        if self.map.len() >= self.max_sessions || self.handshaking >= self.max_handshakes {
            Stats::inc(&self.stats.dtls_refused);
            self.failures += 1;
            self.maybe_warn(now);
            return false;
        }
        let stream = match self
            .ctx
            .session(peer)
            .and_then(|ssl| SslStream::new(ssl, Channel::default()))
        {
            Ok(s) => s,
            Err(e) => {
                warn!(%peer, "coaps: cannot make a session: {e}");
                return false;
            }
        };
        self.map.insert(
            peer,
            Session {
                stream,
                state: State::Handshaking(now),
                last_seen: now,
            },
        );
        self.handshaking += 1;
        true
    }

    /// Encrypt and send one CoAP datagram to `peer`; false if it has no
    /// established session or sending failed.
    pub fn send(&mut self, socket: &UdpSocket, peer: SocketAddr, bytes: &[u8]) -> bool {
        let Some(s) = self.map.get_mut(&peer) else {
            return false;
        };
        if !matches!(s.state, State::Established(_)) {
            return false;
        }
        s.last_seen = Instant::now();
        let ok = s.stream.ssl_write(bytes).is_ok();
        flush(socket, peer, &mut s.stream, &self.stats) && ok
    }

    /// Retransmit handshake flights that are due, drop handshakes past
    /// their timeout and sessions idle past theirs, except those of peers
    /// in `observing` (an observation may be quiet for long; a vanished
    /// observer is dropped by its unanswered Confirmable notifications and
    /// its session expires after). Returns the peers whose established
    /// sessions ended (their observers go with them).
    pub fn tick(
        &mut self,
        socket: &UdpSocket,
        now: Instant,
        observing: &std::collections::HashSet<SocketAddr>,
    ) -> Vec<SocketAddr> {
        let mut timed_out = Vec::new();
        let mut idle = Vec::new();
        for (&peer, s) in self.map.iter_mut() {
            match s.state {
                State::Handshaking(started)
                    if now.duration_since(started) >= self.handshake_timeout =>
                {
                    timed_out.push(peer);
                }
                State::Handshaking(_) => {
                    // OpenSSL retransmits its last flight when its timer is
                    // due and the handshake is driven again.
                    let _ = s.stream.accept();
                    flush(socket, peer, &mut s.stream, &self.stats);
                }
                State::Established(_)
                    if now.duration_since(s.last_seen) >= self.idle_timeout
                        && !observing.contains(&peer) =>
                {
                    idle.push(peer);
                }
                State::Established(_) => {}
            }
        }
        for peer in timed_out {
            self.fail(peer, "handshake timed out", now);
        }
        for &peer in &idle {
            debug!(%peer, "coaps: idle session forgotten");
            self.remove(peer, true);
        }
        idle
    }

    /// End every session with a close_notify (on shutdown).
    pub fn close_all(&mut self, socket: &UdpSocket) {
        let peers: Vec<SocketAddr> = self.map.keys().copied().collect();
        for peer in peers {
            if let Some(s) = self.map.get_mut(&peer)
                && matches!(s.state, State::Established(_))
            {
                let _ = s.stream.shutdown();
                flush(socket, peer, &mut s.stream, &self.stats);
            }
            self.remove(peer, false);
        }
    }

    /// A handshake that failed: count, forget, log with restraint.
    fn fail(&mut self, peer: SocketAddr, why: &str, now: Instant) {
        Stats::inc(&self.stats.dtls_handshake_failures);
        debug!(%peer, "coaps: {why}");
        self.remove(peer, false);
        self.failures += 1;
        self.maybe_warn(now);
    }

    fn maybe_warn(&mut self, now: Instant) {
        if self
            .warned
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            return;
        }
        warn!(
            count = self.failures,
            "coaps: dtls handshakes failed or were refused (unknown identity, wrong key, timeout or too many); see debug logs and verge_coap_dtls_* metrics"
        );
        self.failures = 0;
        self.warned = Some(now);
    }

    /// Forget a session; `closed` counts an established one as closed.
    fn remove(&mut self, peer: SocketAddr, closed: bool) {
        let Some(s) = self.map.remove(&peer) else {
            return;
        };
        match s.state {
            State::Handshaking(_) => self.handshaking -= 1,
            State::Established(_) => {
                self.stats
                    .dtls_sessions
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                if closed {
                    Stats::inc(&self.stats.dtls_sessions_closed);
                }
            }
        }
    }
}

/// Whether `data` is a sequence of whole DTLS 1.x records, none of them
/// encrypted (epoch above 0) yet shorter than any cipher suite's overhead.
/// OpenSSL ends a session on some records too short to decrypt instead of
/// discarding them, which would let anyone who can send from a device's
/// address end its session with one small datagram.
fn plausible(mut data: &[u8]) -> bool {
    /// Least ciphertext of an encrypted record (AEAD tag and nonce).
    const MIN_SEALED: usize = 16;
    if data.is_empty() {
        return false;
    }
    while !data.is_empty() {
        if data.len() < RECORD_HEADER || data[1] != 0xfe {
            return false;
        }
        let epoch = u16::from_be_bytes([data[3], data[4]]);
        let len = usize::from(u16::from_be_bytes([data[11], data[12]]));
        if data.len() < RECORD_HEADER + len || (epoch > 0 && len < MIN_SEALED) {
            return false;
        }
        data = &data[RECORD_HEADER + len..];
    }
    true
}

/// Send what a session wrote; false if a send failed (counted).
fn flush(
    socket: &UdpSocket,
    peer: SocketAddr,
    stream: &mut SslStream<Channel>,
    stats: &Stats,
) -> bool {
    let mut ok = true;
    for d in stream.get_mut().outbound.drain(..) {
        if let Err(e) = socket.try_send_to(&d, peer) {
            debug!(%peer, "coaps send: {e}");
            Stats::inc(&stats.send_errors);
            ok = false;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::plausible;

    fn record(epoch: u16, body: &[u8]) -> Vec<u8> {
        let mut r = vec![23, 0xfe, 0xfd];
        r.extend_from_slice(&epoch.to_be_bytes());
        r.extend_from_slice(&[0, 0, 0, 0, 0, 1]);
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn only_whole_records_of_plausible_length_pass() {
        assert!(plausible(&record(0, b"hi")), "epoch 0 is not encrypted");
        assert!(plausible(&record(1, &[0; 16])));
        assert!(
            !plausible(&record(1, &[0; 15])),
            "shorter than any sealed record"
        );
        let two = [record(0, b"x"), record(1, &[0; 24])].concat();
        assert!(plausible(&two));
        assert!(!plausible(&two[..two.len() - 1]), "cut short");
        assert!(!plausible(&[]));
        assert!(!plausible(&[23, 0xfe, 0xfd, 0, 0]), "header cut short");
        let mut not_dtls = record(0, b"x");
        not_dtls[1] = 0x03;
        assert!(!plausible(&not_dtls), "a TLS, not DTLS, version");
    }
}
