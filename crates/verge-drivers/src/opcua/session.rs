//! Opening the session: the client and its PKI, the session's event loop, and
//! how connection and service errors become driver errors.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use opcua::client::{Client, ClientBuilder, IdentityToken, SessionPollResult};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, EndpointDescription, MessageSecurityMode, ReadValueId, StatusCode,
    TimestampsToReturn, UserTokenPolicy,
};
use tokio::sync::oneshot;

use crate::config::{DriverConfig, PointConfig};
use crate::protocol::DriverError;

use super::DEFAULT_PKI_DIR;
use super::values::{Kind, type_name};
use super::{Conn, OpcuaClient, Slot, State, lock, node_id, security};

impl OpcuaClient {
    /// Check `cfg` and make the client; nothing is opened yet.
    pub fn new(cfg: &DriverConfig) -> Result<OpcuaClient, String> {
        let endpoint = cfg
            .endpoint
            .clone()
            .filter(|e| e.starts_with("opc.tcp://"))
            .ok_or("endpoint: an OPC UA driver needs `endpoint = \"opc.tcp://host:port/...\"`")?;
        let (policy, mode) = security(cfg)?;
        let mut nodes = Vec::with_capacity(cfg.devices.len());
        let mut offsets = Vec::with_capacity(cfg.devices.len());
        let mut n = 0;
        for (i, d) in cfg.devices.iter().enumerate() {
            offsets.push(n);
            let mut ids = Vec::with_capacity(d.points.len());
            for (j, p) in d.points.iter().enumerate() {
                ids.push(
                    node_id(&p.address)
                        .map_err(|e| format!("devices[{i}].points[{j}].address: {e}"))?,
                );
            }
            n += ids.len();
            nodes.push(ids);
        }
        Ok(OpcuaClient {
            cfg: cfg.clone(),
            endpoint,
            policy,
            mode,
            pki_dir: PathBuf::from(cfg.pki_dir.as_deref().unwrap_or(DEFAULT_PKI_DIR)),
            nodes,
            offsets,
            client: None,
            conn: None,
        })
    }

    /// The client (certificate store, generated certificate), made once.
    pub(super) async fn client(&mut self) -> Result<&mut Client, DriverError> {
        if self.client.is_none() {
            let pki = self.pki_dir.clone();
            let secure = self.policy != SecurityPolicy::None;
            let name = self.cfg.name.clone();
            let trust = self.cfg.trust_server_certs;
            let timeout = self.cfg.timeout;
            // Generating an RSA key on first start takes a while: off the
            // runtime's threads.
            let client = tokio::task::spawn_blocking(move || {
                make_client(pki, secure, &name, trust, timeout)
            })
            .await
            .map_err(|e| DriverError::Connection(format!("making the OPC UA client: {e}")))??;
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| DriverError::Connection("no client".into()))
    }

    /// Open a session and wait until it is activated; no subscription yet.
    pub(super) async fn open(&mut self) -> Result<(), DriverError> {
        if let Some(old) = self.conn.take()
            && old.ready
            && old.lost().is_none()
        {
            let _ = tokio::time::timeout(self.cfg.timeout, old.session.disconnect()).await;
        }
        let url = self.endpoint.clone();
        let (policy, mode) = (self.policy, self.mode);
        let pki = self.pki_dir.clone();
        let total =
            self.offsets.last().copied().unwrap_or(0) + self.nodes.last().map_or(0, Vec::len);
        let client = self.client().await?;
        let endpoint: EndpointDescription = (
            url.as_str(),
            policy.to_uri(),
            mode,
            UserTokenPolicy::anonymous(),
        )
            .into();
        let connected = client
            .connect_to_matching_endpoint(endpoint, IdentityToken::Anonymous)
            .await;
        let (session, event_loop) = match connected {
            Ok(c) => c,
            // The library's word for "no endpoint of the server matches"
            // is BadTcpEndpointUrlInvalid; say which part does not match.
            Err(e) if e.status() == StatusCode::BadTcpEndpointUrlInvalid => {
                let offered = client.get_server_endpoints_from_url(url.as_str()).await;
                return Err(match offered {
                    Ok(list) => no_matching_endpoint(&list, &url, policy, mode),
                    Err(_) => connection_error(e.status(), &e.to_string(), &pki),
                });
            }
            Err(e) => return Err(connection_error(e.status(), &e.to_string(), &pki)),
        };
        let state = Arc::new(State {
            slots: Mutex::new(vec![Slot::default(); total]),
            lost: Mutex::new(None),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(drive(event_loop, state.clone(), ready_tx, pki.clone()));
        self.conn = Some(Conn {
            session,
            task,
            state,
            ready: false,
        });
        match ready_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(DriverError::Connection("the session ended".into())),
        }
    }

    /// The session, if it is usable.
    pub(super) fn live(&self) -> Result<&Conn, DriverError> {
        let conn = self
            .conn
            .as_ref()
            .filter(|c| c.ready)
            .ok_or_else(|| DriverError::Connection("not connected".into()))?;
        if let Some(why) = conn.lost() {
            return Err(DriverError::Connection(why));
        }
        Ok(conn)
    }

    /// Close the session politely.
    pub async fn disconnect(&mut self) {
        if let Some(conn) = self.conn.take()
            && conn.lost().is_none()
        {
            let _ = tokio::time::timeout(self.cfg.timeout, conn.session.disconnect()).await;
        }
    }

    /// The type a write to point `j` of device `i` must have.
    pub(super) async fn write_kind(
        &self,
        conn: &Conn,
        i: usize,
        j: usize,
        point: &PointConfig,
    ) -> Result<Kind, DriverError> {
        if let Some(t) = point.data_type {
            return Ok(Kind::from(t));
        }
        let cached = lock(&conn.state.slots)
            .get(self.offsets[i] + j)
            .and_then(|s| s.value.as_ref().and_then(|v| v.value.clone()));
        let value = match cached {
            Some(v) => v,
            None => {
                let read = ReadValueId {
                    node_id: self.nodes[i][j].clone(),
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                };
                let dv = bounded(
                    self.cfg.timeout,
                    conn.session.read(&[read], TimestampsToReturn::Neither, 0.0),
                )
                .await?
                .into_iter()
                .next()
                .ok_or_else(|| DriverError::BadResponse("empty read result".into()))?;
                if let Some(s) = dv.status.filter(|s| s.is_bad()) {
                    return Err(DriverError::Refused(s.to_string()));
                }
                dv.value.unwrap_or_default()
            }
        };
        Kind::of(&value).ok_or_else(|| {
            DriverError::Invalid(format!(
                "point {:?}: cannot write a value of type {}; set the point's `type`",
                point.name,
                type_name(&value)
            ))
        })
    }
}

/// Why no endpoint of the server matches the one asked for: the security
/// the server does not offer (listing what it does), or the URL.
pub(super) fn no_matching_endpoint(
    offered: &[EndpointDescription],
    url: &str,
    policy: SecurityPolicy,
    mode: MessageSecurityMode,
) -> DriverError {
    let security = |p: SecurityPolicy, m: MessageSecurityMode| {
        let name = match p {
            SecurityPolicy::Unknown => "an unknown policy".to_owned(),
            p => p.to_str().to_ascii_lowercase(),
        };
        match m {
            MessageSecurityMode::Sign => format!("{name} (sign only)"),
            MessageSecurityMode::SignAndEncrypt => format!("{name} (sign and encrypt)"),
            _ => name,
        }
    };
    let same_security = |e: &&EndpointDescription| {
        e.security_mode == mode
            && SecurityPolicy::from_uri(e.security_policy_uri.as_ref()) == policy
    };
    if let Some(e) = offered.iter().find(same_security) {
        return DriverError::Connection(format!(
            "the server offers security {} at {}, not at {url}; set `endpoint` to it",
            security(policy, mode),
            e.endpoint_url.as_ref()
        ));
    }
    let mut list: Vec<String> = offered
        .iter()
        .map(|e| {
            security(
                SecurityPolicy::from_uri(e.security_policy_uri.as_ref()),
                e.security_mode,
            )
        })
        .collect();
    list.sort();
    list.dedup();
    DriverError::Connection(format!(
        "security: the server offers no endpoint with security {} (it offers: {})",
        security(policy, mode),
        if list.is_empty() {
            "nothing".to_owned()
        } else {
            list.join(", ")
        }
    ))
}

/// Make the client: PKI directory, certificate (generated when missing and
/// needed), retry left to the runner. With security `none` the client
/// needs no certificate, so async-opcua's ERROR lines about the missing
/// application instance certificate (logged while the client is made, on
/// every driver start and browse) are not emitted: the client is made
/// with logging off for this thread, which is all that runs here.
pub(super) fn make_client(
    pki: PathBuf,
    secure: bool,
    name: &str,
    trust: bool,
    timeout: Duration,
) -> Result<Client, DriverError> {
    if secure {
        return build_client(pki, secure, name, trust, timeout);
    }
    tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
        build_client(pki, secure, name, trust, timeout)
    })
}

fn build_client(
    pki: PathBuf,
    secure: bool,
    name: &str,
    trust: bool,
    timeout: Duration,
) -> Result<Client, DriverError> {
    let client = ClientBuilder::new()
        .application_name(format!("Verge OPC UA driver {name}"))
        .application_uri("urn:verge:opcua-client")
        .product_uri("urn:verge")
        .pki_dir(&pki)
        .create_sample_keypair(secure)
        .trust_server_certs(trust)
        .verify_server_certs(true)
        .session_retry_limit(0)
        .recreate_subscriptions(false)
        .request_timeout(timeout)
        .session_name(format!("verge-{name}"))
        .client()
        .map_err(|e| DriverError::Connection(format!("OPC UA client config: {}", e.join("; "))))?;
    if secure {
        let store = client.certificate_store().clone();
        let store = store.read();
        if store.read_own_cert().is_err() || store.read_own_pkey().is_err() {
            return Err(DriverError::Connection(format!(
                "no client certificate and key under {} (own/cert.der, private/private.pem) and none could be made",
                pki.display()
            )));
        }
    }
    Ok(client)
}

/// Drive the session's event loop until the connection is lost; report
/// the first connect's outcome on `ready`.
pub(super) async fn drive(
    event_loop: opcua::client::SessionEventLoop<opcua::client::transport::TcpConnector>,
    state: Arc<State>,
    ready: oneshot::Sender<Result<(), DriverError>>,
    pki: PathBuf,
) {
    let mut ready = Some(ready);
    let stream = event_loop.enter();
    tokio::pin!(stream);
    let why = loop {
        match stream.next().await {
            Some(Ok(SessionPollResult::Reconnected(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            Some(Ok(SessionPollResult::ConnectionLost(code))) => {
                break connection_error(code, "connection lost", &pki);
            }
            Some(Ok(_)) => {}
            Some(Err(code)) => break connection_error(code, "cannot connect", &pki),
            None => break DriverError::Connection("session closed".into()),
        }
    };
    *lock(&state.lost) = Some(
        why.to_string()
            .trim_start_matches("connection: ")
            .to_string(),
    );
    if let Some(r) = ready.take() {
        let _ = r.send(Err(why));
    }
}

/// A connection-level failure, with a hint for certificate trouble.
pub(super) fn connection_error(code: StatusCode, what: &str, pki: &std::path::Path) -> DriverError {
    let hint = if code == StatusCode::BadCertificateUntrusted
        || code == StatusCode::BadSecurityChecksFailed
    {
        format!(
            " (a server certificate not yet trusted is stored in {}/rejected: move it to {}/trusted, or set trust_server_certs)",
            pki.display(),
            pki.display()
        )
    } else {
        String::new()
    };
    if what.contains(&code.to_string()) {
        DriverError::Connection(format!("{what}{hint}"))
    } else {
        DriverError::Connection(format!("{what}: {code}{hint}"))
    }
}

/// Bound a service call by the driver's timeout and map its error.
pub(super) async fn bounded<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, opcua::types::Error>>,
) -> Result<T, DriverError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(service_error(&e)),
        Err(_) => Err(DriverError::Timeout(
            u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        )),
    }
}

pub(super) fn service_error(e: &opcua::types::Error) -> DriverError {
    let code = e.status();
    if code == StatusCode::BadTimeout || code == StatusCode::BadRequestTimeout {
        DriverError::Timeout(0)
    } else if [
        StatusCode::BadConnectionClosed,
        StatusCode::BadNotConnected,
        StatusCode::BadCommunicationError,
        StatusCode::BadSecureChannelClosed,
        StatusCode::BadSecureChannelIdInvalid,
        StatusCode::BadSessionClosed,
        StatusCode::BadSessionIdInvalid,
        StatusCode::BadSessionNotActivated,
        StatusCode::BadServerNotConnected,
        StatusCode::BadNoCommunication,
        StatusCode::BadTcpInternalError,
        StatusCode::BadDisconnect,
        StatusCode::BadShutdown,
    ]
    .contains(&code)
    {
        DriverError::Connection(e.to_string())
    } else {
        DriverError::Refused(e.to_string())
    }
}
