//! Listeners: accept loops over already-bound sockets for TCP, TLS,
//! WebSocket and WebSocket over TLS. Every transport ends up as a byte stream
//! handed to [`crate::connection::serve`].

use std::fs::File;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tracing::{debug, info, warn};

use crate::config::{ListenersConfig, TlsConfig};
use crate::connection::{Ctx, serve};
use crate::error::BrokerError;

/// The transport a listener speaks.
#[derive(Clone)]
pub enum Transport {
    /// MQTT over plain TCP.
    Tcp,
    /// MQTT over TLS.
    Tls(Arc<ServerConfig>),
    /// MQTT over WebSocket at `path`.
    Ws(String),
    /// MQTT over WebSocket over TLS at `path`.
    Wss(Arc<ServerConfig>, String),
}

impl Transport {
    /// The URL scheme of the listener: `mqtt`, `mqtts`, `ws` or `wss`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Tcp => "mqtt",
            Transport::Tls(_) => "mqtts",
            Transport::Ws(_) => "ws",
            Transport::Wss(..) => "wss",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls(_) => "tls",
            Transport::Ws(_) => "ws",
            Transport::Wss(..) => "wss",
        }
    }
}

/// A bound socket and the transport to speak on it.
pub struct BoundListener {
    /// The socket, already bound (tests bind port 0).
    pub listener: TcpListener,
    /// The transport.
    pub transport: Transport,
}

impl BoundListener {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Which transport, as a short name (`tcp`, `tls`, `ws`, `wss`).
    pub fn kind(&self) -> &'static str {
        self.transport.name()
    }
}

/// Bind every enabled listener in the config.
pub async fn bind_all(cfg: &ListenersConfig) -> Result<Vec<BoundListener>, BrokerError> {
    let mut out = Vec::new();
    let bind = |addr: SocketAddr, what: &'static str| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|error| BrokerError::Listener {
                what: format!("{what} on {addr}"),
                error,
            })
    };
    if cfg.tcp.enabled {
        out.push(BoundListener {
            listener: bind(cfg.tcp.bind, "broker.listeners.tcp").await?,
            transport: Transport::Tcp,
        });
    }
    if cfg.tls.enabled {
        let tls = server_tls(&cfg.tls.tls, "broker.listeners.tls")?;
        out.push(BoundListener {
            listener: bind(cfg.tls.bind, "broker.listeners.tls").await?,
            transport: Transport::Tls(tls),
        });
    }
    if cfg.ws.enabled {
        out.push(BoundListener {
            listener: bind(cfg.ws.bind, "broker.listeners.ws").await?,
            transport: Transport::Ws(cfg.ws.path.clone()),
        });
    }
    if cfg.wss.enabled {
        let tls = server_tls(&cfg.wss.tls, "broker.listeners.wss")?;
        out.push(BoundListener {
            listener: bind(cfg.wss.bind, "broker.listeners.wss").await?,
            transport: Transport::Wss(tls, cfg.wss.path.clone()),
        });
    }
    Ok(out)
}

/// A self-signed certificate for `localhost` / `127.0.0.1` in `dir`
/// (`cert.pem`, `key.pem`), generated on first use and reused after; for the
/// demo's TLS listeners. The key is private (0600, in a 0700 directory;
/// a key an older version left readable is made private). Returns the TLS
/// settings pointing at the files.
pub fn self_signed(dir: &Path) -> Result<TlsConfig, BrokerError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let io = |what: &Path, e: std::io::Error| BrokerError::Tls(format!("{}: {e}", what.display()));
    if !(cert.exists() && key.exists()) {
        verge_net::fs::create_private_dir(dir).map_err(|e| io(dir, e))?;
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let made = rcgen::generate_simple_self_signed(names)
            .map_err(|e| BrokerError::Tls(format!("generating a self-signed certificate: {e}")))?;
        let key_pem = made.signing_key.serialize_pem();
        verge_net::fs::write_atomic(&key, key_pem.as_bytes(), verge_net::fs::PRIVATE_FILE)
            .map_err(|e| io(&key, e))?;
        verge_net::fs::write_atomic(&cert, made.cert.pem().as_bytes(), 0o644)
            .map_err(|e| io(&cert, e))?;
    } else {
        verge_net::fs::make_private(&key).map_err(|e| io(&key, e))?;
    }
    Ok(TlsConfig {
        cert: Some(cert),
        key: Some(key),
        client_ca: None,
        require_client_cert: false,
    })
}

/// Build a rustls server config from PEM files; `key` names the config
/// section in errors.
pub fn server_tls(cfg: &TlsConfig, key: &str) -> Result<Arc<ServerConfig>, BrokerError> {
    let cert_path = cfg.cert.as_deref().ok_or_else(|| {
        BrokerError::Config(format!("{key}.cert: required when the listener is enabled"))
    })?;
    let key_path = cfg.key.as_deref().ok_or_else(|| {
        BrokerError::Config(format!("{key}.key: required when the listener is enabled"))
    })?;
    let certs = load_certs(cert_path, &format!("{key}.cert"))?;
    let private = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| BrokerError::Tls(format!("{key}.key {}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in load_certs(ca, &format!("{key}.client_ca"))? {
                roots.add(c).map_err(|e| {
                    BrokerError::Tls(format!("{key}.client_ca {}: {e}", ca.display()))
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if cfg.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            let v = v
                .build()
                .map_err(|e| BrokerError::Tls(format!("{key}.client_ca: {e}")))?;
            builder.with_client_cert_verifier(v)
        }
        None if cfg.require_client_cert => {
            return Err(BrokerError::Config(format!(
                "{key}.require_client_cert: needs {key}.client_ca to verify certificates against"
            )));
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, private)
        .map_err(|e| BrokerError::Tls(format!("{key}: {e}")))?;
    config.alpn_protocols = vec![b"mqtt".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_certs(path: &Path, key: &str) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let file =
        File::open(path).map_err(|e| BrokerError::Tls(format!("{key} {}: {e}", path.display())))?;
    let certs: Result<Vec<_>, _> =
        CertificateDer::pem_reader_iter(&mut BufReader::new(file)).collect();
    let certs = certs.map_err(|e| BrokerError::Tls(format!("{key} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(BrokerError::Tls(format!(
            "{key} {}: no certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

/// Accept connections until `shutdown` turns true.
pub(crate) async fn accept_loop(
    bound: BoundListener,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
) {
    let kind = bound.transport.name();
    if let Ok(a) = bound.listener.local_addr() {
        info!(listener = kind, addr = %a, "listening");
    }
    loop {
        let accepted = tokio::select! {
            r = bound.listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off, keep going.
                warn!(listener = kind, "accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        // Plain TCP gets a task of its own type so that idle connections do
        // not carry the (much larger) TLS and WebSocket state.
        match &bound.transport {
            Transport::Tcp => {
                tokio::spawn(serve(stream, peer, None, "mqtt", ctx));
            }
            other => {
                let transport = other.clone();
                tokio::spawn(handle(stream, peer, transport, ctx));
            }
        }
    }
}

async fn handle(stream: TcpStream, peer: SocketAddr, transport: Transport, ctx: Arc<Ctx>) {
    match transport {
        Transport::Tcp => serve(stream, peer, None, "mqtt", ctx).await,
        Transport::Tls(cfg) => {
            let Some((tls, name)) = tls_accept(stream, peer, cfg, &ctx).await else {
                return;
            };
            serve(tls, peer, name, "mqtts", ctx).await
        }
        Transport::Ws(path) => {
            if let Some(ws) = ws_accept(stream, peer, &path, ctx.cfg.connect_timeout.get()).await {
                serve(ws, peer, None, "ws", ctx).await
            }
        }
        Transport::Wss(cfg, path) => {
            let Some((tls, name)) = tls_accept(stream, peer, cfg, &ctx).await else {
                return;
            };
            if let Some(ws) = ws_accept(tls, peer, &path, ctx.cfg.connect_timeout.get()).await {
                serve(ws, peer, name, "wss", ctx).await
            }
        }
    }
}

async fn tls_accept(
    stream: TcpStream,
    peer: SocketAddr,
    cfg: Arc<ServerConfig>,
    ctx: &Ctx,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, Option<String>)> {
    let acceptor = TlsAcceptor::from(cfg);
    let tls =
        match tokio::time::timeout(ctx.cfg.connect_timeout.get(), acceptor.accept(stream)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                info!(%peer, "tls handshake failed: {e}");
                return None;
            }
            Err(_) => {
                info!(%peer, "tls handshake timed out");
                return None;
            }
        };
    let name = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| common_name(c.as_ref()));
    Some((tls, name))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// Upgrade to WebSocket (subprotocol `mqtt`, only at `path`) and turn the
/// message stream into a byte stream through an in-memory pipe.
async fn ws_accept<S>(
    stream: S,
    peer: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Option<tokio::io::DuplexStream>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let want = path.to_owned();
    // The callback's error type is fixed by tungstenite.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != want {
            let mut r =
                ErrorResponse::new(Some(format!("no MQTT endpoint at {}", req.uri().path())));
            *r.status_mut() = StatusCode::NOT_FOUND;
            return Err(r);
        }
        let offered = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|p| p.eq_ignore_ascii_case("mqtt") || p.eq_ignore_ascii_case("mqttv3.1"))
            .map(str::to_owned);
        if let Some(v) = offered.and_then(|p| HeaderValue::from_str(&p).ok()) {
            resp.headers_mut().insert("sec-websocket-protocol", v);
        }
        Ok(resp)
    };
    // A client that opens the socket and never finishes the upgrade must not
    // hold it forever.
    let upgrade = tokio_tungstenite::accept_hdr_async(stream, callback);
    let ws = match tokio::time::timeout(timeout, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            info!(%peer, "websocket upgrade failed: {e}");
            return None;
        }
        Err(_) => {
            info!(%peer, "websocket upgrade timed out");
            return None;
        }
    };
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let (mut sink, mut source) = ws.split();
        let (mut rd, mut wr) = tokio::io::split(theirs);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                msg = source.next() => match msg {
                    Some(Ok(WsMessage::Binary(b))) => {
                        if wr.write_all(&b).await.is_err() { break; }
                    }
                    Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                    Some(Ok(WsMessage::Text(_))) => {
                        debug!(%peer, "text frame on MQTT websocket; closing");
                        break;
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                },
                n = rd.read(&mut buf) => match n {
                    Ok(0) | Err(_) => {
                        let _ = sink.close().await;
                        break;
                    }
                    Ok(n) => {
                        if sink.send(WsMessage::Binary(buf[..n].to_vec().into())).await.is_err() { break; }
                    }
                },
            }
        }
    });
    Some(ours)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    /// Finding 8 of the security review: the demo's TLS private key was
    /// written 0644. It is 0600 in a 0700 directory, and a key left
    /// readable by an older version is made private at the next start.
    #[test]
    fn finding_8_the_self_signed_key_is_private() {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join("tls");
        let made = super::self_signed(&dir).expect("made");
        let key = made.key.expect("key");
        let mode =
            |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        super::self_signed(&dir).expect("reused");
        assert_eq!(mode(&key), 0o600);
    }
}
