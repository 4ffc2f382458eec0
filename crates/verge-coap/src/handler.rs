//! Request handling that needs the broker or a password check: runs as a
//! task of its own and returns an [`Outcome`] to the run loop. Identifies
//! the device through the broker's authenticator (with a bounded cache of
//! successful password checks) and applies its ACL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use verge_broker::auth::{AuthFailure, Identity};
use verge_broker::{Authenticator, BrokerError, BrokerHandle, LocalSubscription, Message};
use verge_mqtt::{QoS, topic};

use crate::codec::Code;
use crate::config::CoapConfig;
use crate::option;
use crate::stats::Stats;

/// What handlers share.
pub(crate) struct Ctx {
    pub cfg: CoapConfig,
    pub broker: BrokerHandle,
    pub auth: Authenticator,
    pub stats: Arc<Stats>,
    /// Successful password checks: digest of (client id, user, password) to
    /// identity and expiry.
    cache: Mutex<HashMap<[u8; 32], (Instant, Identity)>>,
    /// Bounds concurrent argon2 checks.
    password_slots: Semaphore,
}

impl Ctx {
    pub fn new(
        cfg: CoapConfig,
        broker: BrokerHandle,
        auth: Authenticator,
        stats: Arc<Stats>,
    ) -> Ctx {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ctx {
            cfg,
            broker,
            auth,
            stats,
            cache: Mutex::new(HashMap::new()),
            password_slots: Semaphore::new(2 * cores),
        }
    }
}

/// Credentials and flags from the Uri-Query options.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    /// `u=`: username.
    pub user: Option<String>,
    /// `p=`: password.
    pub pass: Option<String>,
    /// `c=`: client id (defaults to `coap-{peer}`).
    pub client: Option<String>,
    /// `r=1` or `retain`: publish retained.
    pub retain: bool,
}

impl Query {
    /// Parse Uri-Query values; `None` if one is not UTF-8.
    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> Option<Query> {
        let mut q = Query::default();
        for v in values {
            let s = std::str::from_utf8(v).ok()?;
            let (k, val) = s.split_once('=').unwrap_or((s, ""));
            match k {
                "u" => q.user = Some(val.to_owned()),
                "p" => q.pass = Some(val.to_owned()),
                "c" => q.client = Some(val.to_owned()),
                "r" | "retain" => q.retain = matches!(val, "" | "1" | "true"),
                _ => {}
            }
        }
        Some(q)
    }
}

/// The work a handler task does.
pub(crate) enum Job {
    /// POST/PUT: publish `payload` to `topic`.
    Publish {
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
        content_format: Option<u32>,
    },
    /// GET: the retained message, and with `observe` a subscription.
    Get { topic: String, observe: bool },
}

/// A handler's answer.
pub(crate) struct Outcome {
    /// Response code.
    pub code: Code,
    /// Full body (the run loop cuts it into blocks).
    pub body: Vec<u8>,
    /// Content-Format of the body.
    pub content_format: Option<u32>,
    /// A new observation, when one was asked for and allowed.
    pub observe: Option<LocalSubscription>,
}

impl Outcome {
    pub fn code(code: Code) -> Outcome {
        Outcome {
            code,
            body: Vec::new(),
            content_format: None,
            observe: None,
        }
    }
}

/// Run one job for `peer`; `session` is the identity its DTLS session
/// proved (then the query carries no credentials).
pub(crate) async fn handle(
    ctx: &Ctx,
    peer: SocketAddr,
    query: Query,
    session: Option<Arc<str>>,
    job: Job,
) -> Outcome {
    let who = match session {
        Some(name) => {
            let client = query
                .client
                .clone()
                .unwrap_or_else(|| format!("coaps-{peer}"));
            // The PSK proved the name, as a verified certificate would over
            // MQTT/TLS: the registry's device of that name and its ACL apply.
            ctx.auth
                .authenticate(&client, None, None, Some(&name))
                .map_err(|f| match f {
                    AuthFailure::BadCredentials => Code::UNAUTHORIZED,
                    AuthFailure::NotAuthorized => Code::FORBIDDEN,
                })
        }
        None => identify(ctx, peer, &query).await,
    };
    let who = match who {
        Ok(who) => who,
        Err(code) => return Outcome::code(code),
    };
    match job {
        Job::Publish {
            topic,
            payload,
            qos,
            content_format,
        } => {
            if !topic::valid_topic_name(&topic) {
                return Outcome::code(Code::BAD_REQUEST);
            }
            if !ctx.auth.may_publish(&who, &topic) {
                return Outcome::code(Code::FORBIDDEN);
            }
            let mut msg = Message::local(topic, payload, qos, query.retain);
            msg.origin = who.client_id.clone();
            msg.properties.content_type = content_format.map(option::content_type);
            match ctx.broker.publish(msg).await {
                Ok(()) => {
                    Stats::inc(&ctx.stats.publishes);
                    Outcome::code(Code::CHANGED)
                }
                Err(BrokerError::InvalidTopic(_)) => Outcome::code(Code::BAD_REQUEST),
                Err(_) => Outcome::code(Code::SERVICE_UNAVAILABLE),
            }
        }
        Job::Get { topic, observe } => {
            let is_name = topic::valid_topic_name(&topic);
            let valid = if observe {
                topic::valid_topic_filter(&topic) && !topic.starts_with("$share/")
            } else {
                is_name
            };
            if !valid {
                return Outcome::code(Code::BAD_REQUEST);
            }
            if !ctx.auth.may_subscribe(&who, &topic) {
                return Outcome::code(Code::FORBIDDEN);
            }
            // Subscribe before reading the retained value, so nothing
            // published in between is missed.
            let sub = if observe {
                match ctx.broker.subscribe(&topic, ctx.cfg.observer_queue).await {
                    Ok(s) => Some(s),
                    Err(_) => return Outcome::code(Code::SERVICE_UNAVAILABLE),
                }
            } else {
                None
            };
            let retained = if is_name {
                match ctx.broker.retained(&topic).await {
                    Ok(r) => r,
                    Err(_) => return Outcome::code(Code::SERVICE_UNAVAILABLE),
                }
            } else {
                None
            };
            match (retained, sub) {
                (Some(m), observe) => Outcome {
                    code: Code::CONTENT,
                    body: m.payload.to_vec(),
                    content_format: m
                        .properties
                        .content_type
                        .as_deref()
                        .and_then(option::content_format),
                    observe,
                },
                // Observing a topic with no value yet: an empty
                // representation establishes the observation.
                (None, Some(sub)) => Outcome {
                    observe: Some(sub),
                    ..Outcome::code(Code::CONTENT)
                },
                (None, None) => Outcome::code(Code::NOT_FOUND),
            }
        }
    }
}

/// Authenticate the request's credentials (4.01 when wrong, 4.03 when the
/// device may not use that client id, 5.03 when too many checks run).
async fn identify(ctx: &Ctx, peer: SocketAddr, q: &Query) -> Result<Identity, Code> {
    let client = q.client.clone().unwrap_or_else(|| format!("coap-{peer}"));
    let refused = |f: AuthFailure| match f {
        AuthFailure::BadCredentials => Code::UNAUTHORIZED,
        AuthFailure::NotAuthorized => Code::FORBIDDEN,
    };
    let Some(pass) = &q.pass else {
        // No password: nothing expensive to check.
        return ctx
            .auth
            .authenticate(&client, q.user.as_deref(), None, None)
            .map_err(refused);
    };
    let key: [u8; 32] = {
        let mut h = Sha256::new();
        for part in [
            client.as_bytes(),
            q.user.as_deref().unwrap_or("").as_bytes(),
            pass.as_bytes(),
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.finalize().into()
    };
    let now = Instant::now();
    if let Ok(cache) = ctx.cache.lock()
        && let Some((until, who)) = cache.get(&key)
        && *until > now
    {
        return Ok(who.clone());
    }
    let Ok(_slot) = ctx.password_slots.acquire().await else {
        return Err(Code::SERVICE_UNAVAILABLE);
    };
    let auth = ctx.auth.clone();
    let (c, u, p) = (client.clone(), q.user.clone(), pass.clone());
    let result = tokio::task::spawn_blocking(move || {
        auth.authenticate(&c, u.as_deref(), Some(p.as_bytes()), None)
    })
    .await
    .map_err(|_| Code::INTERNAL_SERVER_ERROR)?;
    let who = result.map_err(refused)?;
    let ttl = ctx.cfg.auth_cache_ttl.get();
    if !ttl.is_zero()
        && let Ok(mut cache) = ctx.cache.lock()
    {
        let now = Instant::now();
        cache.retain(|_, (until, _)| *until > now);
        if cache.len() >= ctx.cfg.auth_cache_entries {
            let oldest = cache.iter().min_by_key(|(_, (u, _))| *u).map(|(k, _)| *k);
            if let Some(k) = oldest {
                cache.remove(&k);
                Stats::inc(&ctx.stats.auth_cache_evicted);
            }
        }
        if ctx.cfg.auth_cache_entries > 0 {
            cache.insert(key, (now + ttl, who.clone()));
        }
    }
    Ok(who)
}
