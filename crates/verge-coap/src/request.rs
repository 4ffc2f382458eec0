//! Incoming datagrams in the run loop: decode, de-duplicate, route
//! requests (`/ps/{topic}`, `/.well-known/core`), reassemble Block1
//! uploads, serve Block2 continuations and hand the rest to handler tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tracing::debug;
use verge_mqtt::QoS;

use crate::codec::{CoapMessage, Code, MsgType};
use crate::exchange::Seen;
use crate::gateway::{Body, Done, Loop, ReqMeta};
use crate::handler::{self, Job, Query};
use crate::option::{self, Block};
use crate::stats::Stats;

/// The `/.well-known/core` answer (RFC 6690): the publish-subscribe root.
const CORE_LINKS: &str = "</ps>;rt=\"core.ps\";ct=40";

impl Loop {
    /// One datagram from `peer`.
    pub(crate) fn on_datagram(&mut self, peer: SocketAddr, buf: &[u8]) {
        let msg = match CoapMessage::decode(buf) {
            Ok(m) => m,
            Err(e) => {
                Stats::inc(&self.ctx.stats.malformed);
                debug!(%peer, "malformed coap datagram: {e}");
                // RFC 7252 §4.2: a Confirmable message with a format error
                // is rejected with Reset; anything else is ignored.
                if let Some((MsgType::Con, mid)) = e.header {
                    self.send(peer, &CoapMessage::empty(MsgType::Rst, mid).encode());
                }
                return;
            }
        };
        match msg.ty {
            MsgType::Ack | MsgType::Rst => self.on_ack(peer, msg.ty, msg.mid),
            _ if msg.code.is_request() => self.on_request(peer, msg),
            // CoAP ping (Empty CON) and responses we never asked for.
            MsgType::Con => self.send(peer, &CoapMessage::empty(MsgType::Rst, msg.mid).encode()),
            MsgType::Non => {}
        }
    }

    fn on_request(&mut self, peer: SocketAddr, msg: CoapMessage) {
        let now = Instant::now();
        let (seen, evicted) = self.dedup.check(peer, msg.mid, now);
        let stats = self.ctx.stats.clone();
        stats
            .dedup_evicted
            .fetch_add(evicted, std::sync::atomic::Ordering::Relaxed);
        match seen {
            Seen::New => {}
            Seen::Answered(bytes) => {
                Stats::inc(&stats.duplicates);
                if msg.ty == MsgType::Con {
                    self.send(peer, &bytes);
                }
                return;
            }
            Seen::InProgress => {
                Stats::inc(&stats.duplicates);
                return;
            }
        }
        Stats::inc(&stats.requests);
        let path: Option<Vec<String>> = msg
            .options_of(option::URI_PATH)
            .map(|s| std::str::from_utf8(s).ok().map(str::to_owned))
            .collect();
        let block = |n| msg.option(n).map(Block::decode);
        let mut meta = ReqMeta {
            peer,
            ty: msg.ty,
            mid: msg.mid,
            token: msg.token.clone(),
            topic: String::new(),
            block2: None,
            block1: None,
            observe: false,
        };
        if let Some(n) = option::unknown_critical(&msg.options) {
            debug!(%peer, option = n, "unknown critical option");
            let mut resp = self.response(&meta, Code::BAD_OPTION);
            resp.payload = format!("unknown critical option {n}").into_bytes();
            return self.answer(&meta, &resp);
        }
        let (Some(path), Some(query)) = (path, Query::parse(msg.options_of(option::URI_QUERY)))
        else {
            return self.answer_code(&meta, Code::BAD_REQUEST);
        };
        // Over DTLS the session's identity is the device: a password in the
        // query string is refused rather than silently ignored, so a
        // misconfigured device is noticed (and stops sending it).
        if self.is_dtls() && (query.user.is_some() || query.pass.is_some()) {
            let mut resp = self.response(&meta, Code::BAD_REQUEST);
            resp.payload = b"over dtls the session identity is the device: drop u= and p=".to_vec();
            return self.answer(&meta, &resp);
        }
        // Absent is fine; present but unreadable is 4.02.
        let (block1, block2) = (block(option::BLOCK1), block(option::BLOCK2));
        if matches!(block1, Some(None)) || matches!(block2, Some(None)) {
            return self.answer_code(&meta, Code::BAD_OPTION);
        }
        let (block1, block2) = (block1.flatten(), block2.flatten());
        meta.block2 = block2;
        let segs: Vec<&str> = path.iter().map(String::as_str).collect();
        match segs.as_slice() {
            [".well-known", "core"] if msg.code == Code::GET => {
                let mut resp = self.response(&meta, Code::CONTENT);
                let body = Body {
                    bytes: Arc::new(CORE_LINKS.as_bytes().to_vec()),
                    content_format: Some(40),
                    etag: crate::gateway::etag(CORE_LINKS.as_bytes()),
                };
                meta.topic = ".well-known/core".into();
                self.put_body(&mut resp, &meta, body);
                return self.answer(&meta, &resp);
            }
            ["ps", rest @ ..] if !rest.is_empty() => meta.topic = rest.join("/"),
            _ => return self.answer_code(&meta, Code::NOT_FOUND),
        }
        let job = match msg.code {
            Code::GET => {
                let observe = msg.uint(option::OBSERVE);
                // Observe 1, or a plain GET with an observation's token,
                // ends that observation (RFC 7641 §3.6).
                if observe != Some(0)
                    && let Some(&id) = self.by_token.get(&(peer, meta.token.clone()))
                {
                    self.drop_observer(id, false);
                }
                if observe != Some(0)
                    && meta.block2.is_some_and(|b| b.num > 0)
                    && self.serve_block(&meta)
                {
                    return;
                }
                meta.observe = observe == Some(0);
                Job::Get {
                    topic: meta.topic.clone(),
                    observe: meta.observe,
                }
            }
            Code::POST | Code::PUT => {
                let max = self.ctx.cfg.max_payload;
                let content_format = msg.uint(option::CONTENT_FORMAT);
                let payload = match block1 {
                    Some(b) => match self.upload(&meta, b, msg.payload, now) {
                        Some(body) => {
                            meta.block1 = Some(Block { more: false, ..b });
                            body
                        }
                        None => return,
                    },
                    None if msg.payload.len() > max => return self.too_large(&meta),
                    None => msg.payload,
                };
                Job::Publish {
                    topic: meta.topic.clone(),
                    payload,
                    qos: if msg.ty == MsgType::Con {
                        QoS::AtLeastOnce
                    } else {
                        QoS::AtMostOnce
                    },
                    content_format,
                }
            }
            _ => return self.answer_code(&meta, Code::METHOD_NOT_ALLOWED),
        };
        self.spawn_job(meta, query, job);
    }

    /// 4.13 with Size1 = the largest body accepted.
    fn too_large(&mut self, meta: &ReqMeta) {
        let mut resp = self.response(meta, Code::REQUEST_ENTITY_TOO_LARGE);
        resp.push_uint(option::SIZE1, self.ctx.cfg.max_payload as u32);
        self.answer(meta, &resp);
    }

    /// One Block1 block: the whole body once the last block arrived, else
    /// `None` (already answered 2.31 Continue or an error).
    fn upload(&mut self, meta: &ReqMeta, b: Block, data: Vec<u8>, now: Instant) -> Option<Vec<u8>> {
        let key = (meta.peer, meta.topic.clone());
        if b.offset().saturating_add(data.len()) > self.ctx.cfg.max_payload {
            self.uploads.remove(&key);
            self.too_large(meta);
            return None;
        }
        if b.more && data.len() != b.size() {
            self.answer_code(meta, Code::BAD_REQUEST);
            return None;
        }
        if b.num == 0 {
            let dropped = self.uploads.insert(key.clone(), Vec::new(), now);
            self.ctx
                .stats
                .blocks_dropped
                .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        }
        let in_order = match self.uploads.get_mut(&key, now) {
            Some(buf) if buf.len() == b.offset() => {
                buf.extend_from_slice(&data);
                true
            }
            _ => false,
        };
        if !in_order {
            self.answer_code(meta, Code::REQUEST_ENTITY_INCOMPLETE);
            return None;
        }
        if b.more {
            let mut resp = self.response(meta, Code::CONTINUE);
            resp.push_option(option::BLOCK1, b.encode());
            self.answer(meta, &resp);
            return None;
        }
        self.uploads.remove(&key)
    }

    /// Answer a Block2 continuation from the kept body; false if none is
    /// kept (the handler then reads the retained value afresh).
    fn serve_block(&mut self, meta: &ReqMeta) -> bool {
        let key = (meta.peer, meta.topic.clone());
        let Some(body) = self.bodies.get_mut(&key, Instant::now()) else {
            return false;
        };
        let body = Body {
            bytes: body.bytes.clone(),
            content_format: body.content_format,
            etag: body.etag.clone(),
        };
        let mut resp = self.response(meta, Code::CONTENT);
        if !self.put_body(&mut resp, meta, body) {
            resp = self.response(meta, Code::BAD_OPTION);
        }
        self.answer(meta, &resp);
        true
    }

    /// Put `body` into `resp`, block-wise when it is larger than the block
    /// size (keeping it for continuations). False if the requested block
    /// lies beyond the body.
    pub(crate) fn put_body(&mut self, resp: &mut CoapMessage, meta: &ReqMeta, body: Body) -> bool {
        let cfg_szx = Block::szx_for(self.ctx.cfg.block_size);
        let szx = meta.block2.map_or(cfg_szx, |b| b.szx.min(cfg_szx));
        let num = meta.block2.map_or(0, |b| b.num);
        let size = 1usize << (szx + 4);
        if let Some(cf) = body.content_format {
            resp.push_uint(option::CONTENT_FORMAT, cf);
        }
        resp.push_option(option::ETAG, body.etag.clone());
        let len = body.bytes.len();
        if len <= size && num == 0 {
            resp.payload = body.bytes.to_vec();
            return true;
        }
        let start = (num as usize).saturating_mul(size);
        if start >= len || num > Block::MAX_NUM {
            return false;
        }
        let end = (start + size).min(len);
        let more = end < len;
        resp.payload = body.bytes[start..end].to_vec();
        resp.push_option(option::BLOCK2, Block { num, more, szx }.encode());
        if num == 0 {
            resp.push_uint(option::SIZE2, len as u32);
        }
        let key = (meta.peer, meta.topic.clone());
        let dropped = self.bodies.insert(key, body, Instant::now());
        self.ctx
            .stats
            .blocks_dropped
            .fetch_add(dropped, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Run `job` in a task of its own (5.03 when too many are running).
    fn spawn_job(&mut self, meta: ReqMeta, query: Query, job: Job) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let mut resp = self.response(&meta, Code::SERVICE_UNAVAILABLE);
            resp.push_uint(option::MAX_AGE, 1);
            return self.answer(&meta, &resp);
        };
        let ctx = self.ctx.clone();
        let tx = self.done_tx.clone();
        let session = self.session_identity(meta.peer);
        tokio::spawn(async move {
            let outcome = handler::handle(&ctx, meta.peer, query, session, job).await;
            let _ = tx.send(Done { meta, outcome }).await;
            drop(permit);
        });
    }
}
