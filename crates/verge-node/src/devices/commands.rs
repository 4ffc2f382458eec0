//! The commands the node holds for its devices: taken from the cloud,
//! kept until the device replies or the command expires, in one 0600 file
//! `<data_dir>/devices/commands.json` (written whole and atomically after
//! every change, restored at start). Bounded: at most [`MAX_COMMANDS`]
//! pending in all and [`MAX_PER_DEVICE`] per device; the ids of the last
//! [`MAX_FINISHED`] finished commands are kept too, so a late resend of
//! one is acknowledged, not run again. The payloads held take at most
//! [`MAX_BYTES`] in all (a command beyond it is refused, `failed`).
//!
//! The file is also the statuses' outbox: a status is added to it in the
//! same write as the change it reports (a reply finishing its command) and
//! leaves it once the cache queue took it, so a status the queue refused
//! is appended again later (duplicates are harmless: the cloud ranks
//! statuses).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use verge_protocol::device::{CommandRequest, CommandStatus};

/// Most commands the node holds for all its devices.
pub const MAX_COMMANDS: usize = 1_000;
/// Most commands the node holds for one device.
pub const MAX_PER_DEVICE: usize = 100;
/// How many finished command ids are remembered for de-duplication.
pub const MAX_FINISHED: usize = 1_000;
/// Most bytes of payload (as JSON) the node holds for all its devices.
pub const MAX_BYTES: usize = 8 << 20;
/// Most statuses waiting for the cache queue (the oldest is dropped).
pub const MAX_OUTBOX: usize = 10_000;

/// A command the node holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// The command as the cloud sent it.
    pub request: CommandRequest,
    /// Whether it was handed to a connection of the device (it is handed
    /// again at each reconnect until the device answers).
    #[serde(default)]
    pub delivered: bool,
    /// How many times it was handed over.
    #[serde(default)]
    pub attempts: u32,
    /// When it was last handed over, ms since the Unix epoch.
    #[serde(default)]
    pub handed_ms: u64,
}

/// The file's shape.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct File {
    pending: Vec<Held>,
    finished: VecDeque<String>,
    outbox: VecDeque<Outgoing>,
}

/// A status not yet taken by the cache queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outgoing {
    /// Its place in the outbox.
    pub seq: u64,
    /// The status.
    pub status: CommandStatus,
}

fn payload_bytes(req: &CommandRequest) -> usize {
    serde_json::to_vec(&req.payload).map_or(usize::MAX, |v| v.len())
}

/// What [`Commands::take`] decided.
#[derive(Debug, PartialEq)]
pub enum Taken {
    /// New: held now.
    New,
    /// An id the node holds or finished already: acknowledge, do nothing.
    Known,
    /// Refused, with the reason (status `failed`).
    Refused(String),
}

/// The held commands.
pub struct Commands {
    path: PathBuf,
    pending: BTreeMap<String, Held>,
    finished: VecDeque<String>,
    outbox: VecDeque<Outgoing>,
    /// Payload bytes held.
    bytes: usize,
}

impl Commands {
    /// Read `path` (missing: empty; unreadable: moved aside to `.corrupt`).
    pub fn load(path: &Path) -> Commands {
        let file = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice::<File>(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "commands file unreadable, moved aside: {e}");
                let _ = std::fs::rename(path, path.with_extension("json.corrupt"));
                File::default()
            }),
            Err(_) => File::default(),
        };
        let pending: BTreeMap<String, Held> = file
            .pending
            .into_iter()
            .take(MAX_COMMANDS)
            .map(|h| (h.request.id.clone(), h))
            .collect();
        Commands {
            path: path.to_path_buf(),
            bytes: pending.values().map(|h| payload_bytes(&h.request)).sum(),
            pending,
            finished: file.finished,
            outbox: file.outbox,
        }
    }

    /// Add a status to the outbox (written with the next
    /// [`save`](Self::save)).
    pub fn push_status(&mut self, status: CommandStatus) {
        if self.outbox.len() >= MAX_OUTBOX {
            tracing::warn!(
                "{MAX_OUTBOX} command statuses wait for the cache queue; the oldest is dropped"
            );
            self.outbox.pop_front();
        }
        let seq = self.outbox.back().map_or(0, |o| o.seq + 1);
        self.outbox.push_back(Outgoing { seq, status });
    }

    /// The statuses waiting for the cache queue, oldest first.
    pub fn outbox(&self) -> Vec<Outgoing> {
        self.outbox.iter().cloned().collect()
    }

    /// Drop the outbox's statuses up to `seq` (the queue took them).
    pub fn sent_up_to(&mut self, seq: u64) {
        while self.outbox.front().is_some_and(|o| o.seq <= seq) {
            self.outbox.pop_front();
        }
    }

    /// Undo a [`take`](Self::take) whose write failed: the command is not
    /// held, so the cloud's resend is taken afresh.
    pub fn untake(&mut self, id: &str) {
        if let Some(h) = self.pending.remove(id) {
            self.bytes = self.bytes.saturating_sub(payload_bytes(&h.request));
        }
    }

    /// Finish every command of `device` (the cloud removed it).
    pub fn remove_device(&mut self, device: &str) -> Vec<Held> {
        let held = self.of_device(device);
        for h in &held {
            self.finish(device, &h.request.id);
        }
        held
    }

    /// The devices with a command never handed over.
    pub fn undelivered(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .pending
            .values()
            .filter(|h| !h.delivered)
            .map(|h| h.request.device.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// How many commands are held.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Take a command from the cloud (not yet written: call [`save`](Self::save)).
    pub fn take(&mut self, req: CommandRequest) -> Taken {
        if self.pending.contains_key(&req.id) || self.finished.contains(&req.id) {
            return Taken::Known;
        }
        if self.pending.len() >= MAX_COMMANDS {
            return Taken::Refused(format!(
                "the node holds {MAX_COMMANDS} commands, the most it keeps; try again later"
            ));
        }
        let for_device = self
            .pending
            .values()
            .filter(|h| h.request.device == req.device)
            .count();
        if for_device >= MAX_PER_DEVICE {
            return Taken::Refused(format!(
                "the node holds {MAX_PER_DEVICE} commands for device `{}`, the most it keeps for one device",
                req.device
            ));
        }
        let size = payload_bytes(&req);
        if self.bytes.saturating_add(size) > MAX_BYTES {
            return Taken::Refused(format!(
                "node command store full: the commands held take {} of the {MAX_BYTES} bytes it keeps, this one {size}; try again later",
                self.bytes
            ));
        }
        self.bytes += size;
        self.pending.insert(
            req.id.clone(),
            Held {
                request: req,
                delivered: false,
                attempts: 0,
                handed_ms: 0,
            },
        );
        Taken::New
    }

    /// Whether `id` is held or finished already.
    pub fn take_known(&self, id: &str) -> bool {
        self.pending.contains_key(id) || self.finished.contains(&id.to_owned())
    }

    /// The held commands of `device`, oldest first.
    pub fn of_device(&self, device: &str) -> Vec<Held> {
        let mut v: Vec<Held> = self
            .pending
            .values()
            .filter(|h| h.request.device == device)
            .cloned()
            .collect();
        v.sort_by_key(|h| (h.request.created_ms, h.request.id.clone()));
        v
    }

    /// Mark `id` handed over at `now_ms`; whether it was the first time.
    pub fn handed_over(&mut self, id: &str, now_ms: u64) -> bool {
        match self.pending.get_mut(id) {
            Some(h) => {
                h.attempts = h.attempts.saturating_add(1);
                h.handed_ms = now_ms;
                !std::mem::replace(&mut h.delivered, true)
            }
            None => false,
        }
    }

    /// Finish `id` of `device` (replied, failed, expired): dropped from the
    /// store, its id remembered. `None` when the node holds no such command
    /// for that device.
    pub fn finish(&mut self, device: &str, id: &str) -> Option<Held> {
        if self.pending.get(id)?.request.device != device {
            return None;
        }
        let held = self.pending.remove(id)?;
        self.bytes = self.bytes.saturating_sub(payload_bytes(&held.request));
        self.remember(id);
        Some(held)
    }

    /// Remember a finished id (also one refused or expired on arrival).
    pub fn remember(&mut self, id: &str) {
        if self.finished.len() >= MAX_FINISHED {
            self.finished.pop_front();
        }
        self.finished.push_back(id.to_owned());
    }

    /// The devices with a command handed over before `before_ms` and not
    /// answered.
    pub fn unanswered_since(&self, before_ms: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .pending
            .values()
            .filter(|h| h.delivered && h.handed_ms < before_ms)
            .map(|h| h.request.device.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Drop the commands past their `expires_ms` at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Held> {
        let ids: Vec<String> = self
            .pending
            .values()
            .filter(|h| h.request.expires_ms <= now_ms)
            .map(|h| h.request.id.clone())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(h) = self.pending.remove(&id) {
                self.bytes = self.bytes.saturating_sub(payload_bytes(&h.request));
                self.remember(&id);
                out.push(h);
            }
        }
        out
    }

    /// Write the file; on an error the store in memory stays as it is
    /// (the caller decides: a command just taken is not acknowledged).
    pub async fn save(&self) -> Result<(), String> {
        let file = File {
            pending: self.pending.values().cloned().collect(),
            finished: self.finished.clone(),
            outbox: self.outbox.clone(),
        };
        let path = self.path.clone();
        let bytes =
            serde_json::to_vec(&file).map_err(|e| format!("commands not serialized: {e}"))?;
        tokio::task::spawn_blocking(move || {
            verge_net::fs::write_atomic(&path, &bytes, 0o600)
                .map_err(|e| format!("commands not saved: {}: {e}", path.display()))
        })
        .await
        .map_err(|e| format!("commands not saved: {e}"))?
    }

    /// [`save`](Self::save), an error logged.
    pub async fn save_logged(&self) {
        if let Err(e) = self.save().await {
            tracing::error!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(id: &str, device: &str, expires_ms: u64) -> CommandRequest {
        CommandRequest {
            id: id.into(),
            device: device.into(),
            name: "reboot".into(),
            payload: json!({}),
            created_ms: 1,
            expires_ms,
        }
    }

    #[tokio::test]
    async fn commands_are_bounded_deduplicated_expired_and_kept_across_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("commands.json");
        let mut c = Commands::load(&path);
        assert_eq!(c.take(req("a", "d1", 100)), Taken::New);
        assert_eq!(c.take(req("a", "d1", 100)), Taken::Known);
        for i in 1..MAX_PER_DEVICE {
            assert_eq!(c.take(req(&format!("x{i}"), "d1", 100)), Taken::New);
        }
        assert!(matches!(c.take(req("over", "d1", 100)), Taken::Refused(m) if m.contains("d1")));
        assert_eq!(c.take(req("b", "d2", 50)), Taken::New);
        assert!(c.handed_over("b", 10));
        assert!(
            !c.handed_over("b", 20),
            "the second hand-over is not the first"
        );
        assert_eq!(c.unanswered_since(21), ["d2"]);
        assert!(c.unanswered_since(20).is_empty());
        assert!(c.finish("d1", "b").is_none(), "another device's command");
        c.save().await.expect("save");
        let mut back = Commands::load(&path);
        assert_eq!(back.len(), MAX_PER_DEVICE + 1);
        assert!(back.of_device("d2")[0].delivered);
        let gone = back.expire(60);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].request.id, "b");
        assert_eq!(
            back.take(req("b", "d2", 500)),
            Taken::Known,
            "a finished id"
        );
        assert!(back.finish("d1", "a").is_some());
        assert_eq!(back.take(req("a", "d1", 500)), Taken::Known);
    }

    #[tokio::test]
    async fn payloads_have_a_byte_budget() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut c = Commands::load(&dir.path().join("commands.json"));
        let big = |id: &str, device: &str| CommandRequest {
            payload: json!("x".repeat(1 << 20)),
            ..req(id, device, 100)
        };
        let mut n = 0;
        let why = loop {
            match c.take(big(&format!("b{n}"), &format!("d{n}"))) {
                Taken::New => n += 1,
                Taken::Refused(why) => break why,
                Taken::Known => panic!("known"),
            }
        };
        assert_eq!(n, MAX_BYTES / ((1 << 20) + 2));
        assert!(why.contains("node command store full"), "{why}");
        assert_eq!(c.take(req("small", "d0", 100)), Taken::New);
        assert!(c.finish("d0", "b0").is_some());
        assert_eq!(c.take(big("again", "d0")), Taken::New, "room again");
        c.untake("again");
        assert_eq!(c.take(big("again", "d0")), Taken::New, "room after untake");
    }

    #[tokio::test]
    async fn statuses_wait_in_the_outbox_across_a_restart() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("commands.json");
        let mut c = Commands::load(&path);
        let status = |id: &str| CommandStatus {
            id: id.into(),
            device: "d1".into(),
            state: verge_protocol::device::CommandState::Replied,
            at_ms: 1,
            reply: None,
            error: None,
        };
        c.push_status(status("a"));
        c.push_status(status("b"));
        c.save().await.expect("save");
        let mut back = Commands::load(&path);
        let out = back.outbox();
        assert_eq!(out.len(), 2);
        back.sent_up_to(out[0].seq);
        assert_eq!(back.outbox()[0].status.id, "b");
        back.push_status(status("c"));
        assert!(back.outbox()[1].seq > back.outbox()[0].seq);
        // a save that cannot write says so
        std::fs::remove_file(dir.path().join("commands.json")).expect("rm");
        std::fs::create_dir_all(dir.path().join("commands.json/x")).expect("dir");
        assert!(back.save().await.is_err());
    }
}
