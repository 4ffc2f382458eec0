//! OPC UA client driver (cargo feature `opcua`), over the `async-opcua`
//! stack (MPL-2.0, used unmodified as a dependency).
//!
//! One driver is one session to one server endpoint, with security policy
//! `none` or `basic256sha256` (sign and encrypt; `basic256sha256-sign`
//! signs only). The client's application instance certificate and key are
//! generated into `pki_dir` on first start when missing; a server's
//! certificate must be in `pki_dir/trusted/` (an unknown one is stored in
//! `pki_dir/rejected/` for an operator to move) unless `trust_server_certs`.
//!
//! Points are node ids (`ns=2;s=Temperature`, `ns=2;i=1001`, `i=2258`). On
//! connect the driver reads every point once and then keeps them current
//! with one subscription whose monitored items sample each point at its
//! device's `poll` interval; a device "read" returns the latest values the
//! subscription delivered, so the runner's cadence publishes them without a
//! request to the server. Writes are Write service calls, converted to the
//! variable's type (the point's `type` if set, else the type of its last
//! value). [`browse`] lists a node's children for building point tables.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use opcua::client::{
    Client, ClientBuilder, IdentityToken, MonitoredItem, Session, SessionPollResult,
    SubscriptionCallbacks,
};
use opcua::crypto::SecurityPolicy;
use opcua::types::{
    AttributeId, BrowseDescription, BrowseDescriptionResultMask, BrowseDirection, DataValue,
    EndpointDescription, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, ReadValueId, ReferenceTypeId, StatusCode, TimestampsToReturn,
    UserTokenPolicy, Variant, WriteValue,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{DataType, DeviceConfig, DriverConfig, PointConfig};
use crate::protocol::{BoxFuture, DriverError, PointError, PointResult, Protocol};

/// The PKI directory when the config names none.
pub const DEFAULT_PKI_DIR: &str = "opcua-pki";

/// Most nodes in one Read or CreateMonitoredItems request.
const CHUNK: usize = 500;

/// Most references [`browse`] returns.
const MAX_BROWSE: usize = 10_000;

/// Build the OPC UA client for `cfg`: checks the endpoint, security policy
/// and every point's node id; the error names the field.
pub fn build(cfg: &DriverConfig) -> Result<Box<dyn Protocol>, String> {
    Ok(Box::new(OpcuaClient::new(cfg)?))
}

/// The security a config asks for.
fn security(cfg: &DriverConfig) -> Result<(SecurityPolicy, MessageSecurityMode), String> {
    match cfg
        .security
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("none") => Ok((SecurityPolicy::None, MessageSecurityMode::None)),
        Some("basic256sha256") => Ok((
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
        )),
        Some("basic256sha256-sign") => {
            Ok((SecurityPolicy::Basic256Sha256, MessageSecurityMode::Sign))
        }
        Some(other) => Err(format!(
            "security: {other:?} is not one of none, basic256sha256, basic256sha256-sign"
        )),
    }
}

/// Parse a point address as a node id.
fn node_id(address: &str) -> Result<NodeId, String> {
    NodeId::from_str(address.trim()).map_err(|_| {
        format!(
            "{address:?} is not an OPC UA node id (e.g. ns=2;s=Temperature, ns=2;i=1001, i=2258)"
        )
    })
}

/// The latest value of one point.
#[derive(Clone, Default)]
struct Slot {
    /// Last data value from the server (initial read or subscription).
    value: Option<DataValue>,
    /// Why the point has no value (e.g. its monitored item was refused).
    error: Option<String>,
}

/// Shared between the driver, the session's event loop and the
/// subscription callback.
struct State {
    slots: Mutex<Vec<Slot>>,
    /// Set when the session is gone (connection lost, subscription dead).
    lost: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session and the task driving it.
struct Conn {
    session: Arc<Session>,
    task: JoinHandle<()>,
    state: Arc<State>,
    /// Subscription made and values seeded: reads may be answered.
    ready: bool,
}

impl Conn {
    fn lost(&self) -> Option<String> {
        lock(&self.state.lost).clone()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An OPC UA client for one driver.
pub struct OpcuaClient {
    cfg: DriverConfig,
    endpoint: String,
    policy: SecurityPolicy,
    mode: MessageSecurityMode,
    pki_dir: PathBuf,
    /// Node id of every point, `[device][point]`.
    nodes: Vec<Vec<NodeId>>,
    /// First flat slot index of each device.
    offsets: Vec<usize>,
    client: Option<Client>,
    conn: Option<Conn>,
}

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
    async fn client(&mut self) -> Result<&mut Client, DriverError> {
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
    async fn open(&mut self) -> Result<(), DriverError> {
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
        let (session, event_loop) = client
            .connect_to_matching_endpoint(endpoint, IdentityToken::Anonymous)
            .await
            .map_err(|e| connection_error(e.status(), &e.to_string(), &pki))?;
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

    /// Subscribe to every point and seed the values with one read.
    async fn subscribe(&mut self) -> Result<(), DriverError> {
        let timeout = self.cfg.timeout;
        let Some(conn) = &self.conn else {
            return Err(DriverError::Connection("not connected".into()));
        };
        let session = conn.session.clone();
        let state = conn.state.clone();
        let fastest = self
            .cfg
            .devices
            .iter()
            .map(|d| d.poll)
            .min()
            .unwrap_or(Duration::from_secs(1));
        let data = state.clone();
        let status = state.clone();
        let callbacks = SubscriptionCallbacks::new(
            move |n| {
                if n.status.is_bad() {
                    *lock(&status.lost) = Some(format!("subscription ended: {}", n.status));
                }
            },
            move |value: DataValue, item: &MonitoredItem| {
                let Some(k) = (item.client_handle() as usize).checked_sub(1) else {
                    return;
                };
                if let Some(s) = lock(&data.slots).get_mut(k) {
                    s.value = Some(value);
                    s.error = None;
                }
            },
            |_, _| {},
        );
        // A keep-alive about every 10 s (at least every publishing
        // interval); the subscription lives three keep-alives.
        let keep_alive =
            u32::try_from((10_000 / fastest.as_millis().max(1)).clamp(1, 1000)).unwrap_or(10);
        let subscription = bounded(
            timeout,
            session.create_subscription(fastest, keep_alive * 3, keep_alive, 0, 0, true, callbacks),
        )
        .await?;
        let mut items = Vec::new();
        let mut reads = Vec::new();
        for (i, d) in self.cfg.devices.iter().enumerate() {
            for (j, id) in self.nodes[i].iter().enumerate() {
                let handle = u32::try_from(self.offsets[i] + j + 1).unwrap_or(u32::MAX);
                let read = ReadValueId {
                    node_id: id.clone(),
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                };
                reads.push(read.clone());
                items.push(MonitoredItemCreateRequest {
                    item_to_monitor: read,
                    monitoring_mode: MonitoringMode::Reporting,
                    requested_parameters: MonitoringParameters {
                        client_handle: handle,
                        sampling_interval: d.poll.as_secs_f64() * 1000.0,
                        queue_size: 1,
                        discard_oldest: true,
                        ..Default::default()
                    },
                });
            }
        }
        // Seed first, so the first cycle has values; notifications that
        // arrive meanwhile are newer and win.
        let mut k = 0;
        for chunk in reads.chunks(CHUNK) {
            let values = bounded(
                timeout,
                session.read(chunk, TimestampsToReturn::Neither, 0.0),
            )
            .await?;
            let mut slots = lock(&state.slots);
            for v in values.into_iter().take(chunk.len()) {
                if let Some(s) = slots.get_mut(k)
                    && s.value.is_none()
                {
                    s.value = Some(v);
                }
                k += 1;
            }
        }
        let mut k = 0;
        for chunk in items.chunks(CHUNK) {
            let created = bounded(
                timeout,
                session.create_monitored_items(
                    subscription,
                    TimestampsToReturn::Neither,
                    chunk.to_vec(),
                ),
            )
            .await?;
            let mut slots = lock(&state.slots);
            for (n, c) in created.iter().enumerate().take(chunk.len()) {
                if c.result.status_code.is_bad()
                    && let Some(s) = slots.get_mut(k + n)
                {
                    s.error = Some(format!("cannot monitor: {}", c.result.status_code));
                }
            }
            k += chunk.len();
        }
        if let Some(conn) = &mut self.conn {
            conn.ready = true;
        }
        Ok(())
    }

    /// The session, if it is usable.
    fn live(&self) -> Result<&Conn, DriverError> {
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

    /// The references of `node` (default: the Objects folder), following
    /// continuation points, on this client's session.
    pub async fn browse_node(&self, node: Option<&str>) -> Result<Vec<BrowseEntry>, DriverError> {
        let conn = self.live()?;
        let id = match node {
            Some(n) => node_id(n).map_err(DriverError::Invalid)?,
            None => NodeId::objects_folder_id(),
        };
        let desc = BrowseDescription {
            node_id: id,
            browse_direction: BrowseDirection::Forward,
            reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
            include_subtypes: true,
            node_class_mask: 0,
            result_mask: BrowseDescriptionResultMask::all().bits(),
        };
        let timeout = self.cfg.timeout;
        let mut out = Vec::new();
        let mut results = bounded(timeout, conn.session.browse(&[desc], 1000, None)).await?;
        while let Some(r) = results.into_iter().next() {
            if r.status_code.is_bad() {
                return Err(DriverError::Refused(r.status_code.to_string()));
            }
            for rd in r.references.into_iter().flatten() {
                out.push(BrowseEntry {
                    node_id: rd.node_id.node_id.to_string(),
                    browse_name: rd.browse_name.name.as_ref().to_string(),
                    display_name: rd.display_name.text.as_ref().to_string(),
                    node_class: format!("{:?}", rd.node_class),
                    type_definition: rd.type_definition.node_id.to_string(),
                });
            }
            if r.continuation_point.is_null() || out.len() >= MAX_BROWSE {
                if !r.continuation_point.is_null() {
                    let _ = bounded(
                        timeout,
                        conn.session.browse_next(true, &[r.continuation_point]),
                    )
                    .await;
                }
                break;
            }
            results = bounded(
                timeout,
                conn.session.browse_next(false, &[r.continuation_point]),
            )
            .await?;
        }
        out.truncate(MAX_BROWSE);
        Ok(out)
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
    async fn write_kind(
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

/// Make the client: PKI directory, certificate (generated when missing and
/// needed), retry left to the runner.
fn make_client(
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
async fn drive(
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
fn connection_error(code: StatusCode, what: &str, pki: &std::path::Path) -> DriverError {
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
async fn bounded<T>(
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

fn service_error(e: &opcua::types::Error) -> DriverError {
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

impl Protocol for OpcuaClient {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            self.open().await?;
            self.subscribe().await
        })
    }

    fn read<'a>(
        &'a mut self,
        index: usize,
        device: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<Vec<PointResult>, DriverError>> {
        Box::pin(async move {
            let conn = self.live()?;
            let start = *self
                .offsets
                .get(index)
                .ok_or_else(|| DriverError::Invalid(format!("no device {index}")))?;
            let slots = lock(&conn.state.slots);
            Ok((0..device.points.len())
                .map(|j| match slots.get(start + j) {
                    Some(Slot { error: Some(e), .. }) => Err(PointError::new(e.clone())),
                    Some(Slot {
                        value: Some(dv), ..
                    }) => point_value(dv),
                    _ => Err(PointError::new("no value received yet")),
                })
                .collect())
        })
    }

    fn write<'a>(
        &'a mut self,
        index: usize,
        device: &'a DeviceConfig,
        point: &'a PointConfig,
        raw: Value,
    ) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let j = device
                .points
                .iter()
                .position(|p| p.name == point.name)
                .filter(|_| index < self.nodes.len())
                .ok_or_else(|| DriverError::Invalid(format!("no point {:?}", point.name)))?;
            let conn = self.live()?;
            let kind = self.write_kind(conn, index, j, point).await?;
            let variant = kind
                .variant(&raw)
                .map_err(|e| DriverError::Invalid(format!("point {:?}: {e}", point.name)))?;
            let write = WriteValue {
                node_id: self.nodes[index][j].clone(),
                attribute_id: AttributeId::Value as u32,
                value: DataValue {
                    value: Some(variant),
                    ..Default::default()
                },
                ..Default::default()
            };
            let codes = bounded(self.cfg.timeout, conn.session.write(&[write])).await?;
            match codes.first() {
                Some(c) if c.is_good() => Ok(()),
                Some(c) => Err(DriverError::Refused(c.to_string())),
                None => Err(DriverError::BadResponse("empty write result".into())),
            }
        })
    }
}

/// One point's published raw value from its last data value.
fn point_value(dv: &DataValue) -> PointResult {
    if let Some(s) = dv.status.filter(|s| s.is_bad()) {
        return Err(PointError::new(s.to_string()));
    }
    match &dv.value {
        None => Ok(Value::Null),
        Some(v) => to_json(v).map_err(PointError::new),
    }
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A variant as JSON: numbers, booleans and strings as themselves, times as
/// RFC 3339, byte strings as base64, arrays as arrays.
pub fn to_json(v: &Variant) -> Result<Value, String> {
    Ok(match v {
        Variant::Empty => Value::Null,
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(n) => (*n).into(),
        Variant::Byte(n) => (*n).into(),
        Variant::Int16(n) => (*n).into(),
        Variant::UInt16(n) => (*n).into(),
        Variant::Int32(n) => (*n).into(),
        Variant::UInt32(n) => (*n).into(),
        Variant::Int64(n) => (*n).into(),
        Variant::UInt64(n) => (*n).into(),
        Variant::Float(f) => float(f64::from(*f)),
        Variant::Double(f) => float(*f),
        Variant::String(s) => s.value().clone().map_or(Value::Null, Value::String),
        Variant::DateTime(t) => Value::String(t.to_rfc3339()),
        Variant::Guid(g) => Value::String(g.to_string()),
        Variant::StatusCode(c) => Value::String(c.to_string()),
        Variant::ByteString(b) => {
            if b.is_null() {
                Value::Null
            } else {
                Value::String(b.as_base64())
            }
        }
        Variant::QualifiedName(q) => Value::String(q.name.as_ref().to_string()),
        Variant::LocalizedText(t) => Value::String(t.text.as_ref().to_string()),
        Variant::NodeId(n) => Value::String(n.to_string()),
        Variant::ExpandedNodeId(n) => Value::String(n.to_string()),
        Variant::Variant(inner) => to_json(inner)?,
        Variant::Array(a) => Value::Array(a.values.iter().map(to_json).collect::<Result<_, _>>()?),
        other => {
            return Err(format!(
                "values of type {} are not supported",
                type_name(other)
            ));
        }
    })
}

fn type_name(v: &Variant) -> String {
    let s = format!("{v:?}");
    s.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The scalar type of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    SByte,
    Byte,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
    Str,
}

impl From<DataType> for Kind {
    fn from(t: DataType) -> Kind {
        match t {
            DataType::Bool => Kind::Bool,
            DataType::U16 => Kind::U16,
            DataType::I16 => Kind::I16,
            DataType::U32 => Kind::U32,
            DataType::I32 => Kind::I32,
            DataType::F32 => Kind::F32,
            DataType::F64 => Kind::F64,
            DataType::String => Kind::Str,
        }
    }
}

impl Kind {
    fn of(v: &Variant) -> Option<Kind> {
        Some(match v {
            Variant::Boolean(_) => Kind::Bool,
            Variant::SByte(_) => Kind::SByte,
            Variant::Byte(_) => Kind::Byte,
            Variant::Int16(_) => Kind::I16,
            Variant::UInt16(_) => Kind::U16,
            Variant::Int32(_) => Kind::I32,
            Variant::UInt32(_) => Kind::U32,
            Variant::Int64(_) => Kind::I64,
            Variant::UInt64(_) => Kind::U64,
            Variant::Float(_) => Kind::F32,
            Variant::Double(_) => Kind::F64,
            Variant::String(_) => Kind::Str,
            _ => return None,
        })
    }

    /// `v` as a variant of this type, or why not.
    fn variant(self, v: &Value) -> Result<Variant, String> {
        let int = || -> Result<i128, String> {
            let n = v
                .as_number()
                .ok_or_else(|| format!("{v} is not a number"))?;
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1.9e19 {
                    Ok(f as i128)
                } else {
                    Err(format!("{v} is not an integer"))
                }
            }
        };
        let range = |name: &str| format!("{v} is out of range for {name}");
        Ok(match self {
            Kind::Bool => match v {
                Value::Bool(b) => Variant::Boolean(*b),
                Value::Number(n) if n.as_u64() == Some(0) => Variant::Boolean(false),
                Value::Number(n) if n.as_u64() == Some(1) => Variant::Boolean(true),
                _ => return Err(format!("{v} is not a boolean")),
            },
            Kind::SByte => Variant::SByte(i8::try_from(int()?).map_err(|_| range("SByte"))?),
            Kind::Byte => Variant::Byte(u8::try_from(int()?).map_err(|_| range("Byte"))?),
            Kind::I16 => Variant::Int16(i16::try_from(int()?).map_err(|_| range("Int16"))?),
            Kind::U16 => Variant::UInt16(u16::try_from(int()?).map_err(|_| range("UInt16"))?),
            Kind::I32 => Variant::Int32(i32::try_from(int()?).map_err(|_| range("Int32"))?),
            Kind::U32 => Variant::UInt32(u32::try_from(int()?).map_err(|_| range("UInt32"))?),
            Kind::I64 => Variant::Int64(i64::try_from(int()?).map_err(|_| range("Int64"))?),
            Kind::U64 => Variant::UInt64(u64::try_from(int()?).map_err(|_| range("UInt64"))?),
            Kind::F32 => {
                let f = v.as_f64().ok_or_else(|| format!("{v} is not a number"))?;
                let g = f as f32;
                if f.is_finite() && !g.is_finite() {
                    return Err(range("Float"));
                }
                Variant::Float(g)
            }
            Kind::F64 => Variant::Double(v.as_f64().ok_or_else(|| format!("{v} is not a number"))?),
            Kind::Str => match v {
                Value::String(s) => Variant::String(s.as_str().into()),
                _ => return Err(format!("{v} is not a string")),
            },
        })
    }
}

/// One reference found by [`browse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrowseEntry {
    /// The target's node id, usable as a point address.
    pub node_id: String,
    /// Its browse name.
    pub browse_name: String,
    /// Its display name.
    pub display_name: String,
    /// `Object`, `Variable`, `Method`…
    pub node_class: String,
    /// Its type definition's node id.
    pub type_definition: String,
}

/// Browse `node` (default: the Objects folder, `i=85`) on the server of
/// `cfg` over a short-lived session with the driver's endpoint, security
/// and PKI: the children (hierarchical references) of the node.
pub async fn browse(
    cfg: &DriverConfig,
    node: Option<&str>,
) -> Result<Vec<BrowseEntry>, DriverError> {
    let mut c = OpcuaClient::new(cfg).map_err(DriverError::Invalid)?;
    let limit = cfg.timeout * 5;
    let opened = tokio::time::timeout(limit, c.open()).await;
    match opened {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(DriverError::Timeout(
                u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            ));
        }
    }
    if let Some(conn) = &mut c.conn {
        conn.ready = true;
    }
    let r = c.browse_node(node).await;
    c.disconnect().await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        assert_eq!(Kind::U16.variant(&Value::from(7)), Ok(Variant::UInt16(7)));
        assert!(Kind::U16.variant(&Value::from(70000)).is_err());
        assert!(Kind::I16.variant(&Value::from(1.5)).is_err());
        assert_eq!(
            Kind::I32.variant(&Value::from(-3.0)),
            Ok(Variant::Int32(-3))
        );
        assert_eq!(
            Kind::Bool.variant(&Value::from(1)),
            Ok(Variant::Boolean(true))
        );
        assert!(Kind::Bool.variant(&Value::from("x")).is_err());
        assert_eq!(
            Kind::F64.variant(&Value::from(2.5)),
            Ok(Variant::Double(2.5))
        );
        assert!(Kind::Str.variant(&Value::from(2)).is_err());
        assert!(Kind::F32.variant(&Value::from(1e300)).is_err());
        assert_eq!(to_json(&Variant::Double(f64::NAN)), Ok(Value::Null));
        assert_eq!(
            to_json(&Variant::UInt64(u64::MAX)),
            Ok(Value::from(u64::MAX))
        );
        assert_eq!(to_json(&Variant::from("hi")), Ok(Value::from("hi")));
    }

    #[test]
    fn node_ids_and_security() {
        assert!(node_id("ns=2;s=Temperature").is_ok());
        assert!(node_id("ns=2;i=1001").is_ok());
        assert!(node_id("i=2258").is_ok());
        assert!(node_id("Temperature").is_err());
        let mut cfg: DriverConfig = serde_json::from_value(serde_json::json!({
            "name": "ua", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840/",
            "devices": [{"name": "d", "points": [{"name": "t", "address": "ns=2;s=T"}]}]
        }))
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(build(&cfg).is_ok());
        cfg.security = Some("basic128".into());
        assert!(
            build(&cfg)
                .err()
                .is_some_and(|e| e.starts_with("security:"))
        );
        cfg.security = None;
        cfg.devices[0].points[0].address = "nope".into();
        assert!(
            build(&cfg)
                .err()
                .is_some_and(|e| e.starts_with("devices[0].points[0].address:"))
        );
    }
}
