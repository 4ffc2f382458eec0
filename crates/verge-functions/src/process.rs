//! The `process` runtime: long-lived local worker processes speaking the
//! line-delimited JSON protocol of `docs/functions.md` ("The process
//! protocol, version 1") on stdin/stdout, restarted with backoff.
//!
//! Every worker has a supervisor task, its *slot*, that owns the child
//! process, its pipes and its restarts. A call leases a free slot (a
//! semaphore with one permit per slot plus a list of the free ones), hands
//! it the encoded request over a channel and awaits the answer. The slot,
//! not the caller, enforces the timeout and reads the worker's stdout, so a
//! caller that gives up (its future is dropped) never leaves a worker with a
//! half-read line: the slot finishes or times out the request on its own.

use std::borrow::Cow;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::message::{CallError, Message, now_ms};
use crate::runtime::{BoxFuture, HostContext, Runtime};
use crate::spec::RuntimeKind;

/// Longest stdout line (one answer) read from a worker. A longer line fails
/// the call with `bad output` and the worker is restarted.
pub const MAX_LINE: usize = 16 << 20;
/// Stderr lines (and skipped stdout lines) are cut at this length in the log.
const MAX_LOG_LINE: usize = 4 << 10;
/// A function's own error message is cut at this length.
const MAX_ERROR: usize = 4 << 10;
/// First delay before restarting a worker that exited.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest delay between restarts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A worker that stayed up this long has its restart delay reset.
const STABLE_AFTER: Duration = Duration::from_secs(30);
/// How long a worker whose stdin was closed at shutdown may take to exit.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the exit status of a worker that closed a pipe.
const EXIT_WAIT: Duration = Duration::from_millis(500);

type CallResult = Result<Vec<Message>, CallError>;

/// A function run by worker processes.
pub struct ProcessRuntime {
    /// Function name, for logs.
    name: Arc<str>,
    /// Requests to each slot's supervisor task, indexed by slot.
    slots: Vec<mpsc::Sender<Job>>,
    /// Slots not leased to a call.
    free: Mutex<Vec<usize>>,
    /// One permit per entry of `free`.
    permits: Semaphore,
    /// Set by `shutdown`: calls are refused.
    closing: AtomicBool,
    /// Tells the slots to stop their workers (also when dropped).
    stop: watch::Sender<bool>,
    /// The slots' supervisor tasks, awaited by `shutdown`.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Pid of each slot's running worker, 0 while it is down.
    pids: Arc<[AtomicU32]>,
    /// Id of the next request.
    next_id: AtomicU64,
    /// Longest one call may take in a worker.
    timeout: Duration,
}

impl ProcessRuntime {
    /// Start the workers of one function: `ctx.limits` gives their number
    /// and the call timeout. Must be called inside a tokio runtime. Fails,
    /// naming the program, when a worker cannot be started (program not
    /// found, not executable, `workdir` missing…); a program that starts
    /// and then exits is restarted with backoff instead.
    pub fn start(
        command: Vec<String>,
        workdir: Option<PathBuf>,
        ctx: HostContext,
    ) -> Result<ProcessRuntime, String> {
        let mut parts = command.into_iter();
        let program = match parts.next() {
            Some(p) if !p.is_empty() => p,
            _ => return Err("the command is empty".into()),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err("the process runtime must be started inside a tokio runtime".into());
        }
        let n = ctx.limits.concurrency_for(RuntimeKind::Process).max(1);
        let cfg = Arc::new(Config {
            name: ctx.name.clone(),
            program,
            args: parts.collect(),
            workdir,
            version: ctx.version,
            config: ctx.config.clone(),
            timeout: ctx.limits.timeout,
        });
        let mut workers = Vec::with_capacity(n);
        for slot in 0..n {
            // On error the workers already started are dropped, which
            // kills them.
            workers.push(cfg.spawn(slot).map_err(|e| cfg.spawn_error(&e))?);
        }
        let pids: Arc<[AtomicU32]> = workers.iter().map(|w| AtomicU32::new(w.pid)).collect();
        let (stop, _) = watch::channel(false);
        let mut slots = Vec::with_capacity(n);
        let mut tasks = Vec::with_capacity(n);
        for (index, worker) in workers.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(1);
            let slot = Slot {
                index,
                cfg: cfg.clone(),
                jobs: rx,
                stop: stop.subscribe(),
                pids: pids.clone(),
            };
            tasks.push(tokio::spawn(slot.run(worker)));
            slots.push(tx);
        }
        Ok(ProcessRuntime {
            name: ctx.name,
            slots,
            free: Mutex::new((0..n).rev().collect()),
            permits: Semaphore::new(n),
            closing: AtomicBool::new(false),
            stop,
            tasks: Mutex::new(tasks),
            pids,
            next_id: AtomicU64::new(1),
            timeout: ctx.limits.timeout,
        })
    }

    /// Wait for a free slot.
    async fn lease(&self) -> Result<Lease<'_>, CallError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(shutting_down());
        }
        let permit = self.permits.acquire().await.map_err(|_| shutting_down())?;
        if self.closing.load(Ordering::Acquire) {
            return Err(shutting_down());
        }
        let slot = lock(&self.free)
            .pop()
            .ok_or_else(|| CallError::Unavailable("no free worker".into()))?;
        Ok(Lease {
            free: &self.free,
            slot,
            _permit: permit,
        })
    }
}

impl Runtime for ProcessRuntime {
    fn call(&self, msg: Message) -> BoxFuture<'_, CallResult> {
        Box::pin(async move {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let line = encode_request(id, &msg)?;
            let lease = self.lease().await?;
            let slot = self.slots.get(lease.slot).ok_or_else(shutting_down)?;
            let (reply, answer) = oneshot::channel();
            slot.send(Job { id, line, reply })
                .await
                .map_err(|_| shutting_down())?;
            let result = answer.await.unwrap_or_else(|_| Err(shutting_down()));
            drop(lease);
            result
        })
    }

    fn memory_bytes(&self) -> u64 {
        self.pids
            .iter()
            .map(|pid| pid.load(Ordering::Relaxed))
            .filter(|&pid| pid != 0)
            .map(rss_bytes)
            .sum()
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.closing.store(true, Ordering::Release);
            // Calls in progress hold permits; each is bounded by the timeout
            // (waiting for a restarting worker, then again in the worker).
            let n = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
            let grace = self.timeout.saturating_mul(2) + Duration::from_secs(1);
            match tokio::time::timeout(grace, self.permits.acquire_many(n)).await {
                Ok(Ok(all)) => all.forget(),
                Ok(Err(_)) => {}
                Err(_) => tracing::warn!(
                    function = %self.name,
                    "calls still in progress {grace:?} after shutdown began; stopping the workers"
                ),
            }
            self.permits.close();
            self.stop.send_replace(true);
            let tasks = std::mem::take(&mut *lock(&self.tasks));
            for task in tasks {
                let _ = task.await;
            }
        })
    }
}

/// A slot leased to one call; given back when dropped.
struct Lease<'a> {
    /// Where the slot goes back.
    free: &'a Mutex<Vec<usize>>,
    /// The leased slot.
    slot: usize,
    /// Released after the slot is back in `free`.
    _permit: SemaphorePermit<'a>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        lock(self.free).push(self.slot);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn shutting_down() -> CallError {
    CallError::Unavailable("the function is shutting down".into())
}

/// Resident set of a process from `/proc/<pid>/status`; 0 if unknown.
fn rss_bytes(pid: u32) -> u64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |kib| kib.saturating_mul(1024))
}

/// How to start the workers of one function.
struct Config {
    /// Function name, for logs and `VERGE_FUNCTION`.
    name: Arc<str>,
    /// The program to run.
    program: String,
    /// Its arguments.
    args: Vec<String>,
    /// Working directory (default: the node's).
    workdir: Option<PathBuf>,
    /// `VERGE_FUNCTION_VERSION`.
    version: u64,
    /// `VERGE_FUNCTION_CONFIG`.
    config: Arc<str>,
    /// Longest one call may take in a worker.
    timeout: Duration,
}

impl Config {
    /// Start one worker and the task that forwards its stderr to the log.
    fn spawn(&self, slot: usize) -> io::Result<Worker> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("VERGE_FUNCTION", &*self.name)
            .env("VERGE_FUNCTION_VERSION", self.version.to_string())
            .env("VERGE_FUNCTION_CONFIG", &*self.config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = &self.workdir {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn()?;
        let pid = child.id().unwrap_or(0);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(io::Error::other("the worker's pipes are missing"));
        };
        tokio::spawn(forward_stderr(self.name.clone(), pid, stderr));
        tracing::info!(function = %self.name, pid, slot, "worker started");
        Ok(Worker {
            child,
            stdin,
            stdout: LineReader::new(stdout, MAX_LINE),
            pid,
        })
    }

    fn spawn_error(&self, e: &io::Error) -> String {
        match &self.workdir {
            Some(dir) => format!("cannot start `{}` in {}: {e}", self.program, dir.display()),
            None => format!("cannot start `{}`: {e}", self.program),
        }
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Log a worker's stderr line by line until it closes.
async fn forward_stderr(name: Arc<str>, pid: u32, stderr: ChildStderr) {
    let mut lines = LineReader::new(stderr, MAX_LOG_LINE);
    loop {
        match lines.next().await {
            Ok(Line::Full(l)) => tracing::info!(function = %name, pid, "{}", text(&l)),
            Ok(Line::Cut(l)) => tracing::info!(
                function = %name,
                pid,
                "{}… (line cut at {MAX_LOG_LINE} bytes)",
                text(&l)
            ),
            Ok(Line::Eof) | Err(_) => return,
        }
    }
}

/// A line for the log: lossy UTF-8 without a trailing `\r`.
fn text(line: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line))
}

/// The start of a skipped stdout line, for the log.
fn preview(line: &[u8]) -> String {
    const MAX: usize = 200;
    if line.len() > MAX {
        format!("{}… ({} bytes)", text(&line[..MAX]), line.len())
    } else {
        text(line).into_owned()
    }
}

/// One running worker process.
struct Worker {
    /// The process (killed when dropped).
    child: Child,
    /// Requests go here.
    stdin: ChildStdin,
    /// Answers come from here.
    stdout: LineReader<ChildStdout>,
    /// Its pid (0 if unknown).
    pid: u32,
}

impl Worker {
    /// Why the worker closed a pipe: its exit status, or, if it is still
    /// running after a short wait, that it closed the pipe (it is killed).
    async fn ended(&mut self, pipe: &str) -> String {
        match tokio::time::timeout(EXIT_WAIT, self.child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => format!("closed its {pipe}, exit status unknown: {e}"),
            Err(_) => {
                let _ = self.child.kill().await;
                format!("closed its {pipe} (killed)")
            }
        }
    }

    /// Kill the process and reap it.
    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Close stdin, let the worker exit (reading what it still writes),
    /// and kill it if it has not within [`STOP_GRACE`].
    async fn stop(self, name: &str) {
        let Worker {
            mut child,
            stdin,
            mut stdout,
            pid,
        } = self;
        drop(stdin);
        let exit = async {
            while let Ok(Line::Full(_) | Line::Cut(_)) = stdout.next().await {}
            child.wait().await
        };
        match tokio::time::timeout(STOP_GRACE, exit).await {
            Ok(Ok(status)) => tracing::info!(function = %name, pid, "worker stopped ({status})"),
            Ok(Err(e)) => tracing::warn!(function = %name, pid, "worker stopped: {e}"),
            Err(_) => {
                let _ = child.kill().await;
                tracing::warn!(
                    function = %name,
                    pid,
                    "worker still running {STOP_GRACE:?} after its stdin was closed; killed"
                );
            }
        }
    }
}

/// What [`LineReader::next`] read.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line without its `\n` (a last line without one counts).
    Full(Vec<u8>),
    /// The first `max` bytes of a longer line; the rest of it is skipped.
    Cut(Vec<u8>),
    /// The pipe is closed.
    Eof,
}

/// Reads lines of at most `max` bytes without ever buffering more.
struct LineReader<R> {
    /// The pipe.
    inner: BufReader<R>,
    /// The line read so far.
    buf: Vec<u8>,
    /// Longest line returned whole.
    max: usize,
    /// Skipping the rest of a line that was too long.
    skipping: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> LineReader<R> {
        LineReader {
            inner: BufReader::new(inner),
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// The next line. Cancel safe: what was read of a line before the
    /// future was dropped is kept for the next call.
    async fn next(&mut self) -> io::Result<Line> {
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                self.skipping = false;
                if self.buf.is_empty() {
                    return Ok(Line::Eof);
                }
                return Ok(Line::Full(std::mem::take(&mut self.buf)));
            }
            let newline = chunk.iter().position(|&b| b == b'\n');
            let used = newline.map_or(chunk.len(), |i| i + 1);
            if self.skipping {
                self.skipping = newline.is_none();
                self.inner.consume(used);
                continue;
            }
            let data = &chunk[..newline.unwrap_or(chunk.len())];
            let room = self.max.saturating_sub(self.buf.len());
            if data.len() > room {
                self.buf.extend_from_slice(&data[..room]);
                self.skipping = newline.is_none();
                self.inner.consume(used);
                return Ok(Line::Cut(std::mem::take(&mut self.buf)));
            }
            self.buf.extend_from_slice(data);
            self.inner.consume(used);
            if newline.is_some() {
                return Ok(Line::Full(std::mem::take(&mut self.buf)));
            }
        }
    }
}

/// One request handed to a slot.
struct Job {
    /// Request id; the answer carries it.
    id: u64,
    /// The request line, with its `\n`.
    line: Vec<u8>,
    /// Where the result goes.
    reply: oneshot::Sender<CallResult>,
}

/// A job that arrived while the slot's worker was down.
struct Pending {
    /// The job.
    job: Job,
    /// When to stop waiting for the worker.
    deadline: Instant,
}

/// Why a slot has no running worker.
enum Down {
    /// The worker exited or was killed, for this reason.
    Exited(String),
    /// It could not be started again.
    NotStarted(String),
}

impl Down {
    /// The error of a call that waited for the worker in vain.
    fn error(&self) -> CallError {
        match self {
            Down::Exited(why) => {
                CallError::WorkerExited(format!("{why}; not running again within the timeout"))
            }
            Down::NotStarted(why) => CallError::Unavailable(why.clone()),
        }
    }
}

/// How one exchange with a worker ended.
enum Outcome {
    /// The worker answered (or the answer was malformed).
    Answer(CallResult),
    /// No answer within the timeout.
    Timeout,
    /// The worker closed its stdin or stdout, for this reason.
    Exited(String),
    /// The answer line was longer than [`MAX_LINE`].
    TooLong,
}

/// The supervisor of one worker: serves its jobs, restarts it.
struct Slot {
    /// Slot number, for logs and `pids`.
    index: usize,
    /// How to start the worker.
    cfg: Arc<Config>,
    /// Jobs for this slot.
    jobs: mpsc::Receiver<Job>,
    /// Set when the runtime stops.
    stop: watch::Receiver<bool>,
    /// Where the running worker's pid is published.
    pids: Arc<[AtomicU32]>,
}

impl Slot {
    async fn run(mut self, first: Worker) {
        let mut next = Some(first);
        let mut backoff = BACKOFF_MIN;
        let mut pending = None;
        loop {
            let worker = match next.take() {
                Some(w) => Ok(w),
                None => self.cfg.spawn(self.index),
            };
            let down = match worker {
                Ok(w) => {
                    let (pid, started) = (w.pid, Instant::now());
                    let Some(why) = self.serve(w, &mut pending).await else {
                        return;
                    };
                    if started.elapsed() >= STABLE_AFTER {
                        backoff = BACKOFF_MIN;
                    }
                    tracing::warn!(
                        function = %self.cfg.name,
                        pid,
                        "worker ended: {why}; restarting in {backoff:?}"
                    );
                    Down::Exited(format!("{why} (pid {pid})"))
                }
                Err(e) => {
                    let why = self.cfg.spawn_error(&e);
                    tracing::warn!(function = %self.cfg.name, "{why}; retrying in {backoff:?}");
                    Down::NotStarted(why)
                }
            };
            if !self.wait(&mut pending, backoff, &down).await {
                return;
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Serve jobs with a running worker until it ends (its reason) or the
    /// runtime stops (`None`, the worker stopped).
    async fn serve(&mut self, mut w: Worker, pending: &mut Option<Pending>) -> Option<String> {
        let name = self.cfg.name.clone();
        self.set_pid(w.pid);
        let end = loop {
            let job = match pending.take() {
                Some(p) => p.job,
                None => tokio::select! {
                    biased;
                    () = stopped(&mut self.stop) => break None,
                    job = self.jobs.recv() => match job {
                        Some(job) => job,
                        None => break None,
                    },
                    line = w.stdout.next() => match line {
                        Ok(Line::Full(l)) => {
                            tracing::warn!(
                                function = %name,
                                pid = w.pid,
                                "stdout line outside a call skipped: {}",
                                preview(&l)
                            );
                            continue;
                        }
                        Ok(Line::Cut(_)) => {
                            w.kill().await;
                            break Some(format!("wrote a stdout line longer than {MAX_LINE} bytes"));
                        }
                        Ok(Line::Eof) | Err(_) => break Some(w.ended("stdout").await),
                    },
                },
            };
            let Job { id, line, reply } = job;
            match self.exchange(&mut w, id, &line).await {
                Outcome::Answer(result) => {
                    let _ = reply.send(result);
                }
                Outcome::Timeout => {
                    let _ = reply.send(Err(CallError::Timeout(self.cfg.timeout_ms())));
                    w.kill().await;
                    break Some(format!(
                        "killed after a call timed out ({:?})",
                        self.cfg.timeout
                    ));
                }
                Outcome::Exited(why) => {
                    let _ = reply.send(Err(CallError::WorkerExited(format!(
                        "{why} (pid {})",
                        w.pid
                    ))));
                    break Some(why);
                }
                Outcome::TooLong => {
                    let _ = reply.send(Err(CallError::BadOutput(format!(
                        "the answer line is longer than {MAX_LINE} bytes"
                    ))));
                    w.kill().await;
                    break Some(format!("wrote a stdout line longer than {MAX_LINE} bytes"));
                }
            }
        };
        self.set_pid(0);
        if end.is_none() {
            w.stop(&name).await;
        }
        end
    }

    /// Write one request and read lines until its answer, under the timeout.
    async fn exchange(&self, w: &mut Worker, id: u64, line: &[u8]) -> Outcome {
        let name = &self.cfg.name;
        let pid = w.pid;
        let exchange = async {
            let written = async {
                w.stdin.write_all(line).await?;
                w.stdin.flush().await
            };
            if written.await.is_err() {
                return Outcome::Exited(w.ended("stdin").await);
            }
            loop {
                match w.stdout.next().await {
                    Ok(Line::Full(l)) => match parse_answer(&l, id) {
                        Answer::Done(result) => return Outcome::Answer(result),
                        Answer::Skip(why) => tracing::warn!(
                            function = %name,
                            pid,
                            "stdout line skipped ({why}): {}",
                            preview(&l)
                        ),
                        Answer::Stale(other) => tracing::warn!(
                            function = %name,
                            pid,
                            "answer with id {other} skipped: the call in progress has id {id}"
                        ),
                    },
                    Ok(Line::Cut(_)) => return Outcome::TooLong,
                    Ok(Line::Eof) | Err(_) => return Outcome::Exited(w.ended("stdout").await),
                }
            }
        };
        tokio::time::timeout(self.cfg.timeout, exchange)
            .await
            .unwrap_or(Outcome::Timeout)
    }

    /// Sleep `backoff` while the worker is down. A job arriving meanwhile
    /// waits for the worker up to the timeout, then fails with `down`'s
    /// error. `false` when the runtime stops.
    async fn wait(
        &mut self,
        pending: &mut Option<Pending>,
        backoff: Duration,
        down: &Down,
    ) -> bool {
        let until = Instant::now() + backoff;
        loop {
            let expires = pending.as_ref().map(|p| p.deadline);
            tokio::select! {
                biased;
                () = stopped(&mut self.stop) => {
                    if let Some(p) = pending.take() {
                        let _ = p.job.reply.send(Err(shutting_down()));
                    }
                    return false;
                }
                () = tokio::time::sleep_until(until) => return true,
                () = tokio::time::sleep_until(expires.unwrap_or(until)), if expires.is_some() => {
                    if let Some(p) = pending.take() {
                        let _ = p.job.reply.send(Err(down.error()));
                    }
                }
                job = self.jobs.recv(), if pending.is_none() => match job {
                    Some(job) => {
                        *pending = Some(Pending {
                            job,
                            deadline: Instant::now() + self.cfg.timeout,
                        });
                    }
                    None => return false,
                },
            }
        }
    }

    fn set_pid(&self, pid: u32) {
        if let Some(slot) = self.pids.get(self.index) {
            slot.store(pid, Ordering::Relaxed);
        }
    }
}

/// Resolves when the runtime stops (or was dropped).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A request line (docs/functions.md).
#[derive(Serialize)]
struct Request<'a> {
    id: u64,
    topic: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content_type: Option<&'a str>,
    user_properties: &'a [(String, String)],
    time_ms: i64,
    qos: u8,
}

/// The request line for a message, with its `\n`.
fn encode_request(id: u64, msg: &Message) -> Result<Vec<u8>, CallError> {
    let (payload, payload_base64) = match std::str::from_utf8(&msg.payload) {
        Ok(text) => (Some(text), None),
        Err(_) => (None, Some(B64.encode(&msg.payload))),
    };
    let request = Request {
        id,
        topic: &msg.topic,
        payload,
        payload_base64,
        content_type: msg.content_type.as_deref(),
        user_properties: &msg.user_properties,
        time_ms: msg.time_ms,
        qos: msg.qos,
    };
    let mut line = serde_json::to_vec(&request)
        .map_err(|e| CallError::Unavailable(format!("cannot encode the request: {e}")))?;
    line.push(b'\n');
    Ok(line)
}

/// What a stdout line read during a call is.
#[derive(Debug)]
enum Answer {
    /// Not a JSON object with an `id` (why): skipped.
    Skip(&'static str),
    /// An answer to another request (its id): skipped.
    Stale(Value),
    /// The answer to the call.
    Done(CallResult),
}

/// Read a stdout line as the answer to request `id`.
fn parse_answer(line: &[u8], id: u64) -> Answer {
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(line) else {
        return Answer::Skip("not a JSON object");
    };
    let Some(got) = answer.get("id") else {
        return Answer::Skip("no `id`");
    };
    if got.as_u64() != Some(id) {
        return Answer::Stale(got.clone());
    }
    match answer.remove("error") {
        None | Some(Value::Null) => {}
        Some(Value::String(e)) => return Answer::Done(Err(CallError::Returned(cut(e)))),
        Some(other) => return Answer::Done(Err(CallError::Returned(cut(other.to_string())))),
    }
    let messages = match answer.remove("messages") {
        Some(Value::Array(messages)) => messages,
        None | Some(Value::Null) => {
            return Answer::Done(Err(CallError::BadOutput(
                "the answer has neither `messages` nor `error`".into(),
            )));
        }
        Some(_) => {
            return Answer::Done(Err(CallError::BadOutput(
                "`messages` must be an array".into(),
            )));
        }
    };
    let time_ms = now_ms();
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            parse_message(m, time_ms)
                .map_err(|why| CallError::BadOutput(format!("messages[{i}]: {why}")))
        })
        .collect();
    Answer::Done(messages)
}

/// A function's error message, cut at [`MAX_ERROR`] bytes.
fn cut(mut s: String) -> String {
    if s.len() > MAX_ERROR {
        let mut end = MAX_ERROR;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// `None` for a missing key or a JSON `null`.
fn present(v: Option<Value>) -> Option<Value> {
    v.filter(|v| !v.is_null())
}

/// One output message of an answer.
fn parse_message(m: Value, time_ms: i64) -> Result<Message, String> {
    let Value::Object(mut m) = m else {
        return Err("not a JSON object".into());
    };
    let topic = match present(m.remove("topic")) {
        Some(Value::String(topic)) => topic,
        Some(_) => return Err("`topic` must be a string".into()),
        None => return Err("`topic` is missing".into()),
    };
    let payload = match (
        present(m.remove("payload")),
        present(m.remove("payload_base64")),
    ) {
        (Some(Value::String(text)), None) => Bytes::from(text.into_bytes()),
        (None, Some(Value::String(b64))) => B64
            .decode(b64)
            .map(Bytes::from)
            .map_err(|e| format!("`payload_base64` is not valid base64: {e}"))?,
        (Some(_), Some(_)) => {
            return Err("has both `payload` and `payload_base64`; give one".into());
        }
        (Some(_), None) => {
            return Err(
                "`payload` must be a string (binary payloads go in `payload_base64`)".into(),
            );
        }
        (None, Some(_)) => return Err("`payload_base64` must be a string".into()),
        (None, None) => return Err("`payload` or `payload_base64` is missing".into()),
    };
    let content_type = match present(m.remove("content_type")) {
        None => None,
        Some(Value::String(ct)) if ct.is_empty() => None,
        Some(Value::String(ct)) => Some(ct),
        Some(_) => return Err("`content_type` must be a string".into()),
    };
    let user_properties = match present(m.remove("user_properties")) {
        None => Vec::new(),
        Some(Value::Array(pairs)) => pairs
            .into_iter()
            .map(|pair| match pair {
                Value::Array(kv) => match <[Value; 2]>::try_from(kv) {
                    Ok([Value::String(k), Value::String(v)]) => Ok((k, v)),
                    _ => Err(()),
                },
                _ => Err(()),
            })
            .collect::<Result<_, ()>>()
            .map_err(|()| "`user_properties` must be a list of [key, value] string pairs")?,
        Some(_) => {
            return Err("`user_properties` must be a list of [key, value] string pairs".into());
        }
    };
    let qos = match present(m.remove("qos")) {
        None => 1,
        Some(q) => match q.as_u64() {
            Some(q @ 0..=2) => q as u8,
            _ => return Err(format!("`qos` must be 0, 1 or 2, not {q}")),
        },
    };
    let retain = match present(m.remove("retain")) {
        None => false,
        Some(Value::Bool(retain)) => retain,
        Some(_) => return Err("`retain` must be true or false".into()),
    };
    Ok(Message {
        topic,
        payload,
        content_type,
        user_properties,
        time_ms,
        qos,
        retain,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(line: &str, id: u64) -> Answer {
        parse_answer(line.as_bytes(), id)
    }

    fn bad_output(line: &str) -> String {
        match answer(line, 1) {
            Answer::Done(Err(CallError::BadOutput(why))) => why,
            other => panic!("expected bad output, got {other:?}"),
        }
    }

    #[test]
    fn lines_that_are_not_answers_are_skipped() {
        for line in ["", "hello", "[1,2]", "42", "{\"no_id\": 1}", "{\"id\": 1"] {
            assert!(matches!(answer(line, 1), Answer::Skip(_)), "{line}");
        }
        assert!(matches!(
            answer("{\"id\": 2, \"messages\": []}", 1),
            Answer::Stale(_)
        ));
        assert!(matches!(
            answer("{\"id\": \"1\", \"messages\": []}", 1),
            Answer::Stale(_)
        ));
    }

    #[test]
    fn an_answer_decodes_with_defaults() {
        let line = r#"{"id": 7, "messages": [
            {"topic": "a", "payload": "x"},
            {"topic": "b", "payload_base64": "/wAB", "content_type": "application/octet-stream",
             "user_properties": [["k", "v"]], "qos": 0, "retain": true, "extra": 1},
            {"topic": "c", "payload": "", "payload_base64": null, "content_type": ""}
        ]}"#;
        let Answer::Done(Ok(out)) = answer(line, 7) else {
            panic!("not decoded");
        };
        assert_eq!(out.len(), 3);
        assert_eq!(
            (out[0].topic.as_str(), &out[0].payload[..]),
            ("a", &b"x"[..])
        );
        assert_eq!(
            (out[0].qos, out[0].retain, &out[0].content_type),
            (1, false, &None)
        );
        assert_eq!(&out[1].payload[..], &[0xff, 0, 1]);
        assert_eq!(
            out[1].content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(out[1].user_properties, vec![("k".into(), "v".into())]);
        assert_eq!((out[1].qos, out[1].retain), (0, true));
        assert_eq!(
            (&out[2].payload[..], &out[2].content_type),
            (&b""[..], &None)
        );
    }

    #[test]
    fn an_error_answer_is_returned() {
        let Answer::Done(Err(e)) = answer(r#"{"id": 1, "error": "too hot"}"#, 1) else {
            panic!("not an error");
        };
        assert_eq!(e, CallError::Returned("too hot".into()));
        let long = format!(r#"{{"id": 1, "error": "{}"}}"#, "é".repeat(5000));
        let Answer::Done(Err(CallError::Returned(e))) = answer(&long, 1) else {
            panic!("not an error");
        };
        assert!(e.len() <= MAX_ERROR + '…'.len_utf8());
    }

    #[test]
    fn malformed_answers_name_the_problem() {
        let cases = [
            (r#"{"id": 1}"#, "neither `messages` nor `error`"),
            (
                r#"{"id": 1, "messages": {}}"#,
                "`messages` must be an array",
            ),
            (
                r#"{"id": 1, "messages": [1]}"#,
                "messages[0]: not a JSON object",
            ),
            (
                r#"{"id": 1, "messages": [{"payload": "x"}]}"#,
                "`topic` is missing",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": 1, "payload": "x"}]}"#,
                "`topic` must be a string",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t"}]}"#,
                "`payload` or `payload_base64` is missing",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload_base64": "!!"}]}"#,
                "not valid base64",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "a", "payload_base64": "YQ=="}]}"#,
                "has both",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": {"a": 1}}]}"#,
                "`payload` must be a string",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "qos": 3}]}"#,
                "`qos` must be 0, 1 or 2, not 3",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "qos": -1}]}"#,
                "`qos` must be 0, 1 or 2",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "retain": 1}]}"#,
                "`retain`",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "user_properties": [["k"]]}]}"#,
                "`user_properties`",
            ),
            (
                r#"{"id": 1, "messages": [{"topic": "t", "payload": "x", "content_type": 5}]}"#,
                "`content_type`",
            ),
        ];
        for (line, expected) in cases {
            let why = bad_output(line);
            assert!(why.contains(expected), "{line}: {why}");
        }
    }

    #[test]
    fn requests_carry_text_or_base64() {
        let mut msg = Message::new("t/1", "héllo");
        msg.content_type = Some("text/plain".into());
        msg.user_properties = vec![("a".into(), "b".into())];
        let line = encode_request(3, &msg).expect("encodes");
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(v["id"], 3);
        assert_eq!(v["payload"], "héllo");
        assert!(v.get("payload_base64").is_none());
        assert_eq!(v["user_properties"], serde_json::json!([["a", "b"]]));
        assert_eq!(v["content_type"], "text/plain");

        let line = encode_request(4, &Message::new("t", vec![0xffu8, b'\n'])).expect("encodes");
        let v: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(v["payload_base64"], "/wo=");
        assert!(v.get("payload").is_none());
        assert!(v.get("content_type").is_none());
    }

    #[tokio::test]
    async fn lines_are_bounded_and_split_reads_are_joined() {
        let input: &[u8] = b"short\n0123456789abc\nnext\r\nlast";
        let mut r = LineReader::new(input, 10);
        assert_eq!(r.next().await.expect("read"), Line::Full(b"short".to_vec()));
        assert_eq!(
            r.next().await.expect("read"),
            Line::Cut(b"0123456789".to_vec())
        );
        assert_eq!(
            r.next().await.expect("read"),
            Line::Full(b"next\r".to_vec())
        );
        assert_eq!(r.next().await.expect("read"), Line::Full(b"last".to_vec()));
        assert_eq!(r.next().await.expect("read"), Line::Eof);

        // A long line arriving in small pieces is cut and its rest skipped.
        let (mut tx, rx) = tokio::io::duplex(4);
        let writer = tokio::spawn(async move {
            tx.write_all(b"abcdefghijklmnopqrstuvwxyz\nok\n0123456789\n")
                .await
                .expect("write");
        });
        let mut r = LineReader::new(rx, 10);
        assert_eq!(
            r.next().await.expect("read"),
            Line::Cut(b"abcdefghij".to_vec())
        );
        assert_eq!(r.next().await.expect("read"), Line::Full(b"ok".to_vec()));
        assert_eq!(
            r.next().await.expect("read"),
            Line::Full(b"0123456789".to_vec())
        );
        writer.await.expect("writer");
        assert_eq!(r.next().await.expect("read"), Line::Eof);
    }
}
