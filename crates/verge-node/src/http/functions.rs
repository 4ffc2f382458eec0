//! `/api/functions`: deploy, list, get, delete and invoke edge functions,
//! read their state; their metrics on `/metrics`.
//!
//! A deploy is `POST /api/functions` (or `PUT /api/functions/{name}`) with
//! the function's spec as JSON; a wasm module is uploaded as
//! `module_base64` in the same body, or as the raw body of
//! `PUT /api/functions/{name}` with `Content-Type: application/wasm`
//! (keeping the function's current spec). The API never reads a file on
//! the node: `path` and process functions come from the config file only.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use verge_functions::{CallError, DeployError, FunctionInfo, FunctionSpec, Functions, Message};

use super::ApiState;
use super::AppError;

/// The routes, to nest under `/api`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/functions", get(list).post(create))
        .route("/functions/{name}", get(one).put(replace).delete(remove))
        .route("/functions/{name}/invoke", post(invoke))
        .route("/functions/{name}/state", get(state))
        // A module uploaded as base64 in JSON is a third larger.
        .layer(DefaultBodyLimit::max(
            verge_functions::MAX_MODULE_BYTES / 3 * 4 + (1 << 20),
        ))
}

fn functions(s: &ApiState) -> Result<Functions, AppError> {
    s.functions.clone().ok_or_else(|| {
        AppError::new(
            StatusCode::NOT_FOUND,
            "functions_disabled",
            "this node has no function runtime",
        )
    })
}

impl From<DeployError> for AppError {
    fn from(e: DeployError) -> AppError {
        let (status, code) = match &e {
            DeployError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_function"),
            DeployError::Unusable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unusable_function"),
            DeployError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DeployError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        AppError::new(status, code, clip(e.to_string()))
    }
}

/// Longest error message answered, in bytes.
const MAX_MESSAGE: usize = 4096;

/// Cut a message at [`MAX_MESSAGE`]: a module's parse error quotes the
/// offending line, which for an upload of a few megabytes that is not wasm
/// is the whole upload (answered JSON-escaped, several times larger), and
/// a function's own error text may be as long as its output.
fn clip(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("… (cut)");
    }
    message
}

impl From<CallError> for AppError {
    fn from(e: CallError) -> AppError {
        let status = match &e {
            CallError::NotFound(_) => StatusCode::NOT_FOUND,
            CallError::Unavailable(_) | CallError::WorkerExited(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            CallError::Timeout(_) | CallError::OutOfFuel(_) => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        AppError::new(status, e.code(), clip(e.to_string()))
    }
}

/// 409 when the cloud manages the function `name`.
fn refuse_managed(s: &ApiState, name: &str) -> Result<(), AppError> {
    super::refuse_managed(
        s,
        "function",
        name,
        verge_agent::StatusHandle::manages_function,
    )
}

/// Record in the node's data dir that the function `name` was deployed
/// (or deleted) through the API; the registry keeps the function itself.
async fn changed(s: &ApiState, name: &str) -> Result<(), AppError> {
    match &s.local {
        Some(l) => l.function_changed(name).await,
        None => Ok(()),
    }
}

fn bad(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, "invalid_function", message)
}

fn bad_request(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

async fn list(State(s): State<ApiState>) -> Result<Json<Vec<FunctionInfo>>, AppError> {
    Ok(Json(functions(&s)?.list()))
}

async fn one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<FunctionInfo>, AppError> {
    functions(&s)?
        .get(&name)
        .map(Json)
        .ok_or_else(|| DeployError::NotFound(name).into())
}

/// A spec, plus an optional uploaded module, from a JSON body.
fn parse_deploy(
    body: &[u8],
    name: Option<&str>,
) -> Result<(FunctionSpec, Option<Vec<u8>>), AppError> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| bad("the body must be a JSON object (the function's spec)"))?;
    let module = match obj.remove("module_base64") {
        None => None,
        Some(serde_json::Value::String(b)) => Some(
            B64.decode(b.trim())
                .map_err(|e| bad(format!("`module_base64`: {e}")))?,
        ),
        Some(_) => return Err(bad("`module_base64` must be a string")),
    };
    if let Some(name) = name {
        match obj.get("name") {
            None => {
                obj.insert("name".into(), name.into());
            }
            Some(serde_json::Value::String(n)) if n == name => {}
            Some(other) => {
                return Err(bad(format!(
                    "the body's name {other} does not match the path's `{name}`"
                )));
            }
        }
    }
    Ok((spec_from(&doc)?, module))
}

/// The spec in `doc`; an error names the field's path (`limits.timeout:
/// …`, `command: …`), which `serde_json::from_value` alone does not.
fn spec_from(doc: &serde_json::Value) -> Result<FunctionSpec, AppError> {
    let bytes = serde_json::to_vec(doc).map_err(|e| bad(e.to_string()))?;
    let Json(spec) = Json::<FunctionSpec>::from_bytes(&bytes).map_err(|e| {
        let why = std::error::Error::source(&e).map_or_else(|| e.body_text(), |s| s.to_string());
        // A position would point into the re-encoded document, not the body.
        match why.rsplit_once(" at line ") {
            Some((head, tail)) if tail.contains(" column ") => bad(head),
            _ => bad(why),
        }
    })?;
    Ok(spec)
}

async fn create(
    State(s): State<ApiState>,
    body: Bytes,
) -> Result<(StatusCode, Json<FunctionInfo>), AppError> {
    let f = functions(&s)?;
    let (spec, module) = parse_deploy(&body, None)?;
    deploy(&s, &f, spec, module).await
}

/// Deploy through the API: `201` for a new function, `200` for a new (or
/// the same) version. Nothing on the node's file system is reachable
/// through the API: a module comes as bytes, never as a `path`, and
/// process functions (commands and working directories on the node) are
/// declared in the config file only.
async fn deploy(
    s: &ApiState,
    f: &Functions,
    spec: FunctionSpec,
    module: Option<Vec<u8>>,
) -> Result<(StatusCode, Json<FunctionInfo>), AppError> {
    spec.validate().map_err(bad)?;
    verge_net::http::guard::check_text(
        "description",
        &spec.description,
        verge_net::http::guard::MAX_DESCRIPTION,
    )
    .map_err(bad)?;
    if spec.path.is_some() {
        return Err(bad(
            "`path` names a file on the node, which the API does not read: upload the module \
             as `module_base64` or as the body of PUT /api/functions/{name} with \
             `Content-Type: application/wasm` (a `path` is taken from the config file only)",
        ));
    }
    if spec.runtime == verge_functions::RuntimeKind::Process || spec.workdir.is_some() {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "process functions run commands on the node: list them under [[functions]] in \
             the node's config file; the API deploys WebAssembly modules only",
        ));
    }
    refuse_managed(s, &spec.name)?;
    let existed = f.exists(&spec.name);
    let name = spec.name.clone();
    let info = f.deploy(spec, module).await?;
    changed(s, &name).await?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(info)))
}

async fn replace(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<FunctionInfo>), AppError> {
    let f = functions(&s)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (spec, module) =
        if ct.starts_with("application/wasm") || ct.starts_with("application/octet-stream") {
            verge_functions::validate_name(&name).map_err(bad)?;
            let mut spec = f
                .get(&name)
                .map(|i| i.spec)
                .unwrap_or_else(|| FunctionSpec::wasm(&name));
            if spec.runtime != verge_functions::RuntimeKind::Wasm {
                return Err(bad(format!(
                    "`{name}` is a process function; upload a module only to a wasm function"
                )));
            }
            spec.path = None;
            (spec, Some(body.to_vec()))
        } else {
            parse_deploy(&body, Some(&name))?
        };
    deploy(&s, &f, spec, module).await
}

async fn remove(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, AppError> {
    let f = functions(&s)?;
    refuse_managed(&s, &name)?;
    f.delete(&name).await?;
    changed(&s, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The body of `POST /api/functions/{name}/invoke`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeRequest {
    /// Topic the message appears to come from.
    #[serde(default = "default_topic")]
    topic: String,
    /// A string is sent as its bytes; any other JSON value as its JSON text.
    #[serde(default)]
    payload: Option<serde_json::Value>,
    /// Binary payload instead of `payload`.
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default)]
    user_properties: Vec<(String, String)>,
    /// Also publish the outputs into the broker (as the function's
    /// subscription trigger would).
    #[serde(default)]
    publish: bool,
}

fn default_topic() -> String {
    "api/invoke".into()
}

/// A message as the API shows it.
#[derive(Serialize)]
pub struct ApiMessage {
    topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    user_properties: Vec<(String, String)>,
    qos: u8,
    retain: bool,
}

impl From<&Message> for ApiMessage {
    fn from(m: &Message) -> ApiMessage {
        let (payload, payload_base64) = match std::str::from_utf8(&m.payload) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (None, Some(B64.encode(&m.payload))),
        };
        ApiMessage {
            topic: m.topic.clone(),
            payload,
            payload_base64,
            content_type: m.content_type.clone(),
            user_properties: m.user_properties.clone(),
            qos: m.qos,
            retain: m.retain,
        }
    }
}

#[derive(Serialize)]
struct InvokeResponse {
    messages: Vec<ApiMessage>,
    duration_us: u64,
    published: bool,
}

async fn invoke(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<InvokeRequest>, JsonRejection>,
) -> Result<Json<InvokeResponse>, AppError> {
    let f = functions(&s)?;
    let Json(req) = body?;
    let payload = match (req.payload, req.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(bad_request("give `payload` or `payload_base64`, not both"));
        }
        (None, Some(b)) => B64
            .decode(b.trim())
            .map_err(|e| bad_request(format!("`payload_base64`: {e}")))?,
        (Some(serde_json::Value::String(s)), None) => s.into_bytes(),
        (Some(v), None) => v.to_string().into_bytes(),
        (None, None) => Vec::new(),
    };
    if !verge_mqtt::topic::valid_topic_name(&req.topic) {
        return Err(bad_request(format!(
            "`topic` {:?} is not a valid MQTT topic name",
            req.topic
        )));
    }
    let mut msg = Message::new(req.topic, payload);
    msg.content_type = req.content_type;
    msg.user_properties = req.user_properties;
    let t = std::time::Instant::now();
    let out = f.invoke(&name, msg).await?;
    let duration_us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
    let messages = out.iter().map(ApiMessage::from).collect();
    if req.publish {
        // All or nothing: check every topic before publishing any.
        if let Some(m) = out
            .iter()
            .find(|m| !verge_mqtt::topic::valid_topic_name(&m.topic))
        {
            return Err(AppError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_output",
                format!(
                    "function `{name}` returned the topic {:?}, which cannot be published; nothing was published",
                    m.topic
                ),
            ));
        }
        crate::services::publish_outputs(&s.broker, &name, 0, out)
            .await
            .map_err(|e| AppError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_output", e))?;
    }
    Ok(Json(InvokeResponse {
        messages,
        duration_us,
        published: req.publish,
    }))
}

/// One state value: text when UTF-8, base64 otherwise.
#[derive(Serialize)]
#[serde(untagged)]
enum StateValue {
    Text(String),
    Binary { base64: String },
}

async fn state(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<BTreeMap<String, StateValue>>, AppError> {
    let entries = functions(&s)?
        .state(&name)
        .ok_or(DeployError::NotFound(name))?;
    Ok(Json(
        entries
            .into_iter()
            .map(|(k, v)| {
                let v = match String::from_utf8(v) {
                    Ok(s) => StateValue::Text(s),
                    Err(e) => StateValue::Binary {
                        base64: B64.encode(e.as_bytes()),
                    },
                };
                (k, v)
            })
            .collect(),
    ))
}

/// `verge_function_*` lines for `/metrics`.
pub fn render_metrics(f: &Functions, out: &mut String) {
    f.render_prometheus(out);
}
