//! The gateway's public face ([`Gateway`], [`RunningGateway`], [`bind`],
//! [`bind_dtls`]) and its run loop: one task per listener that owns the
//! socket and every piece of exchange state, and sends every datagram,
//! in the clear or through the listener's DTLS sessions ([`Transport`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info};
use verge_broker::{Authenticator, BrokerHandle, Message};

use crate::codec::{CoapMessage, Code, MsgType};
use crate::config::CoapConfig;
use crate::error::CoapError;
use crate::exchange::{Dedup, Transfers};
use crate::handler::{Ctx, Outcome};
use crate::observe::{Observer, Pending};
use crate::option::Block;
use crate::stats::{Stats, StatsSnapshot};

/// Room for a datagram's header and options beyond its body.
const MAX_DATAGRAM: usize = 2048;

/// A configured gateway, not yet serving. Its listeners (plain UDP and
/// DTLS) share the configuration, the counters and the authentication
/// cache; each runs its own loop.
#[derive(Clone)]
pub struct Gateway {
    ctx: Arc<Ctx>,
    #[cfg(feature = "dtls")]
    dtls: Option<Arc<crate::dtls::DtlsContext>>,
}

/// Bind the configured plain CoAP address (`coap.bind`).
pub async fn bind(config: &CoapConfig) -> Result<UdpSocket, CoapError> {
    UdpSocket::bind(config.bind)
        .await
        .map_err(|source| CoapError::Io {
            what: format!("bind {}", config.bind),
            source,
        })
}

/// Bind the configured DTLS address (`coap.dtls.bind`).
pub async fn bind_dtls(config: &CoapConfig) -> Result<UdpSocket, CoapError> {
    UdpSocket::bind(config.dtls.bind)
        .await
        .map_err(|source| CoapError::Io {
            what: format!("bind {}", config.dtls.bind),
            source,
        })
}

/// How a listener's datagrams travel.
pub(crate) enum Transport {
    /// Plain UDP; devices give credentials in the query string.
    Plain,
    /// DTLS sessions; the session's PSK identity is the device.
    #[cfg(feature = "dtls")]
    Dtls(crate::dtls::Sessions),
}

impl Gateway {
    /// A gateway that publishes into `broker` and checks devices with
    /// `auth` (the broker's authenticator, so credentials and ACL are the
    /// MQTT ones). Fails on an invalid config.
    pub fn new(
        config: CoapConfig,
        broker: BrokerHandle,
        auth: Authenticator,
    ) -> Result<Gateway, CoapError> {
        config.validate()?;
        #[cfg(feature = "dtls")]
        let dtls = match config.dtls.enabled {
            true => Some(Arc::new(crate::dtls::DtlsContext::new(&config.dtls)?)),
            false => None,
        };
        let stats = Arc::new(Stats::default());
        Ok(Gateway {
            ctx: Arc::new(Ctx::new(config, broker, auth, stats)),
            #[cfg(feature = "dtls")]
            dtls,
        })
    }

    /// The live counters (stay valid while and after it runs).
    pub fn stats(&self) -> Arc<Stats> {
        self.ctx.stats.clone()
    }

    /// Serve plain CoAP on an already-bound socket until `shutdown`
    /// completes (or the broker stops); observers are dropped on return.
    pub async fn run(
        self,
        socket: UdpSocket,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), CoapError> {
        let addr = socket.local_addr().ok();
        info!(?addr, "coap gateway listening");
        Loop::new(self.ctx, socket, Transport::Plain)
            .serve(shutdown)
            .await
    }

    /// Serve CoAP over DTLS on an already-bound socket until `shutdown`
    /// completes; needs `coap.dtls.enabled` (else a config error).
    #[cfg(feature = "dtls")]
    pub async fn run_dtls(
        self,
        socket: UdpSocket,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), CoapError> {
        let Some(dtls) = self.dtls else {
            return Err(CoapError::Config(
                "coap.dtls.enabled: dtls is off in this gateway's config".into(),
            ));
        };
        let addr = socket.local_addr().ok();
        info!(?addr, "coap gateway listening (dtls)");
        let sessions = crate::dtls::Sessions::new(dtls, &self.ctx.cfg.dtls, self.ctx.stats.clone());
        Loop::new(self.ctx, socket, Transport::Dtls(sessions))
            .serve(shutdown)
            .await
    }

    /// Serve plain CoAP on the current runtime in a task of its own.
    pub fn spawn(self, socket: UdpSocket) -> RunningGateway {
        let local_addr = socket.local_addr().ok();
        let stats = self.stats();
        RunningGateway::start(stats, local_addr, |stopped| self.run(socket, stopped))
    }

    /// Serve CoAP over DTLS in a task of its own.
    #[cfg(feature = "dtls")]
    pub fn spawn_dtls(self, socket: UdpSocket) -> RunningGateway {
        let local_addr = socket.local_addr().ok();
        let stats = self.stats();
        RunningGateway::start(stats, local_addr, |stopped| self.run_dtls(socket, stopped))
    }
}

/// A gateway running in its own task.
pub struct RunningGateway {
    stats: Arc<Stats>,
    local_addr: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), CoapError>>,
}

impl RunningGateway {
    fn start<F, Fut>(stats: Arc<Stats>, local_addr: Option<SocketAddr>, run: F) -> RunningGateway
    where
        F: FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
        Fut: Future<Output = Result<(), CoapError>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        RunningGateway {
            stats,
            local_addr,
            stop,
            task,
        }
    }

    /// The counters (shared by every listener of one gateway) now.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The live counters.
    pub fn stats_handle(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The bound UDP address of this listener.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Stop serving and wait for the run loop to end.
    pub async fn shutdown(self) -> Result<(), CoapError> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(CoapError::Io {
                what: "run loop".into(),
                source: std::io::Error::other(e),
            }),
        }
    }
}

/// A request's identity as far as the answer needs it.
#[derive(Debug, Clone)]
pub(crate) struct ReqMeta {
    pub peer: SocketAddr,
    pub ty: MsgType,
    pub mid: u16,
    pub token: Vec<u8>,
    /// `/ps/...` topic (key of Block2 bodies and observers).
    pub topic: String,
    /// Block2 the client asked for.
    pub block2: Option<Block>,
    /// Block1 to echo in the final answer of a block-wise upload.
    pub block1: Option<Block>,
    /// Type of notifications if this registers an observer.
    pub observe: bool,
}

/// A finished handler task.
pub(crate) struct Done {
    pub meta: ReqMeta,
    pub outcome: Outcome,
}

/// A body kept for Block2 continuation requests.
pub(crate) struct Body {
    pub bytes: Arc<Vec<u8>>,
    pub content_format: Option<u32>,
    pub etag: Vec<u8>,
}

/// The run loop's state.
pub(crate) struct Loop {
    pub ctx: Arc<Ctx>,
    pub socket: UdpSocket,
    pub transport: Transport,
    pub dedup: Dedup,
    /// Block1 uploads being reassembled, by peer and URI.
    pub uploads: Transfers<(SocketAddr, String), Vec<u8>>,
    /// Bodies sent block-wise, by peer and topic.
    pub bodies: Transfers<(SocketAddr, String), Body>,
    pub observers: HashMap<u64, Observer>,
    pub by_token: HashMap<(SocketAddr, Vec<u8>), u64>,
    /// Confirmable notifications awaiting their ACK, by peer and message id.
    pub pending: HashMap<(SocketAddr, u16), Pending>,
    pub next_observer: u64,
    pub next_mid: u16,
    pub rng: u64,
    pub permits: Arc<Semaphore>,
    pub done_tx: mpsc::Sender<Done>,
    pub done_rx: mpsc::Receiver<Done>,
    pub notify_tx: mpsc::Sender<(u64, Arc<Message>)>,
    pub notify_rx: mpsc::Receiver<(u64, Arc<Message>)>,
}

impl Loop {
    fn new(ctx: Arc<Ctx>, socket: UdpSocket, transport: Transport) -> Loop {
        let cfg = &ctx.cfg;
        let life = cfg.exchange_lifetime.get();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        let (done_tx, done_rx) = mpsc::channel(cfg.max_concurrent_requests);
        let (notify_tx, notify_rx) = mpsc::channel(1024);
        Loop {
            dedup: Dedup::new(cfg.max_dedup_entries, life),
            uploads: Transfers::new(cfg.max_block_transfers, life),
            bodies: Transfers::new(cfg.max_block_transfers, life),
            observers: HashMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            next_observer: 1,
            next_mid: (seed >> 7) as u16,
            rng: seed,
            permits: Arc::new(Semaphore::new(cfg.max_concurrent_requests)),
            done_tx,
            done_rx,
            notify_tx,
            notify_rx,
            socket,
            transport,
            ctx,
        }
    }

    /// Run until `shutdown`, then drop the observers (and close the DTLS
    /// sessions).
    async fn serve(mut self, shutdown: impl Future<Output = ()>) -> Result<(), CoapError> {
        let result = self.run(shutdown).await;
        self.drop_all_observers();
        #[cfg(feature = "dtls")]
        if let Transport::Dtls(sessions) = &mut self.transport {
            sessions.close_all(&self.socket);
        }
        result
    }

    async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), CoapError> {
        tokio::pin!(shutdown);
        // Room for the largest body allowed in one datagram plus its header
        // and options; a datagram that fills the buffer may have been cut
        // by the socket and is dropped (counted), never taken as whole.
        let mut buf = vec![0u8; (self.ctx.cfg.max_payload + MAX_DATAGRAM).min(65_536)];
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        loop {
            let next = self.next_retransmit();
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, _)) if n == buf.len() => {
                        Stats::inc(&self.ctx.stats.datagrams_received);
                        Stats::inc(&self.ctx.stats.malformed);
                        debug!("coap: a datagram of {n} bytes or more was dropped (larger than max_payload allows)");
                    }
                    Ok((n, peer)) => {
                        Stats::inc(&self.ctx.stats.datagrams_received);
                        self.receive(peer, &buf[..n]);
                    }
                    // ICMP port unreachable and the like surface here on
                    // some systems: not fatal for a UDP server.
                    Err(e) => debug!("coap recv: {e}"),
                },
                Some(done) = self.done_rx.recv() => self.finish(done),
                Some((id, msg)) = self.notify_rx.recv() => self.notify(id, &msg),
                _ = tokio::time::sleep_until(next.into()) => self.retransmit(Instant::now()),
                _ = housekeeping.tick() => {
                    let now = Instant::now();
                    self.dedup.expire(now);
                    let n = self.uploads.expire(now) + self.bodies.expire(now);
                    self.ctx.stats.blocks_dropped.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    #[cfg(feature = "dtls")]
                    if let Transport::Dtls(sessions) = &mut self.transport {
                        let observing = self.observers.values().map(|o| o.peer()).collect();
                        for peer in sessions.tick(&self.socket, now, &observing) {
                            self.drop_observers_of(peer);
                        }
                    }
                }
            }
        }
    }

    /// One datagram from the socket: CoAP as it is, or DTLS records whose
    /// decrypted CoAP datagrams go the same way.
    fn receive(&mut self, peer: SocketAddr, data: &[u8]) {
        match &mut self.transport {
            Transport::Plain => self.on_datagram(peer, data),
            #[cfg(feature = "dtls")]
            Transport::Dtls(sessions) => {
                let mut plain = Vec::new();
                if sessions.receive(&self.socket, peer, data, Instant::now(), &mut plain) {
                    self.drop_observers_of(peer);
                }
                for d in plain {
                    self.on_datagram(peer, &d);
                }
            }
        }
    }

    /// The identity `peer` proved by its DTLS session (never on plain UDP).
    pub fn session_identity(&self, peer: SocketAddr) -> Option<Arc<str>> {
        match &self.transport {
            Transport::Plain => {
                let _ = peer;
                None
            }
            #[cfg(feature = "dtls")]
            Transport::Dtls(sessions) => sessions.identity(peer),
        }
    }

    /// Whether requests arrive over DTLS.
    pub fn is_dtls(&self) -> bool {
        !matches!(self.transport, Transport::Plain)
    }

    /// Send one datagram (failures are counted, never fatal).
    pub fn send(&mut self, peer: SocketAddr, bytes: &[u8]) {
        match &mut self.transport {
            Transport::Plain => {
                if let Err(e) = self.socket.try_send_to(bytes, peer) {
                    debug!(%peer, "coap send: {e}");
                    Stats::inc(&self.ctx.stats.send_errors);
                }
            }
            #[cfg(feature = "dtls")]
            Transport::Dtls(sessions) => {
                if !sessions.send(&self.socket, peer, bytes) {
                    debug!(%peer, "coaps send: no session or send failed");
                    Stats::inc(&self.ctx.stats.send_errors);
                }
            }
        }
    }

    /// A fresh message id for a message the gateway originates.
    pub fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// A pseudo-random number in `[0, 1)` (xorshift; only spreads
    /// retransmission timers).
    pub fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Start a response to `meta`: piggybacked on the ACK of a Confirmable
    /// request, else Non-confirmable with its own message id.
    pub fn response(&mut self, meta: &ReqMeta, code: Code) -> CoapMessage {
        let (ty, mid) = match meta.ty {
            MsgType::Con => (MsgType::Ack, meta.mid),
            _ => (MsgType::Non, self.mid()),
        };
        CoapMessage::new(ty, code, mid, meta.token.clone())
    }

    /// Count, send and remember (for de-duplication) the answer to a
    /// request.
    pub fn answer(&mut self, meta: &ReqMeta, resp: &CoapMessage) {
        let stats = &self.ctx.stats;
        match resp.code {
            Code::UNAUTHORIZED => Stats::inc(&stats.unauthorized),
            Code::FORBIDDEN => Stats::inc(&stats.forbidden),
            c if c.class() == 4 => Stats::inc(&stats.client_errors),
            c if c.class() == 5 => Stats::inc(&stats.server_errors),
            _ => {}
        }
        let bytes = resp.encode();
        self.send(meta.peer, &bytes);
        self.dedup.answer(meta.peer, meta.mid, &bytes);
    }

    /// Answer with just a code.
    pub fn answer_code(&mut self, meta: &ReqMeta, code: Code) {
        let resp = self.response(meta, code);
        self.answer(meta, &resp);
    }

    /// A handler task finished: register its observer, cut its body into
    /// blocks and answer.
    fn finish(&mut self, done: Done) {
        let Done { meta, outcome } = done;
        let mut resp = self.response(&meta, outcome.code);
        if let Some(sub) = outcome.observe
            && let Some(seq) = self.register(&meta, sub)
        {
            resp.push_uint(crate::option::OBSERVE, seq);
        }
        if let Some(b) = meta.block1 {
            resp.push_option(crate::option::BLOCK1, b.encode());
        }
        if outcome.code == Code::CONTENT {
            let body = Body {
                etag: etag(&outcome.body),
                bytes: Arc::new(outcome.body),
                content_format: outcome.content_format,
            };
            if !self.put_body(&mut resp, &meta, body) {
                resp = self.response(&meta, Code::BAD_OPTION);
            }
        }
        self.answer(&meta, &resp);
    }
}

/// A short entity tag of a body (first 8 bytes of its SHA-256).
pub(crate) fn etag(body: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(body)[..8].to_vec()
}
