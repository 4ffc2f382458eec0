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

use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use verge_net::Backoff;

use crate::message::{CallError, Message};
use crate::runtime::{BoxFuture, HostContext, Runtime};
use crate::spec::RuntimeKind;

#[doc(hidden)]
pub mod fuzzing;
mod wire;

use wire::{Answer, Line, LineReader, encode_request, parse_answer, preview, text};

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

pub(crate) type CallResult = Result<Vec<Message>, CallError>;

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
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
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
                        backoff.reset();
                    }
                    tracing::warn!(
                        function = %self.cfg.name,
                        pid,
                        "worker ended: {why}; restarting in {:?}",
                        backoff.current()
                    );
                    Down::Exited(format!("{why} (pid {pid})"))
                }
                Err(e) => {
                    let why = self.cfg.spawn_error(&e);
                    tracing::warn!(
                        function = %self.cfg.name,
                        "{why}; retrying in {:?}",
                        backoff.current()
                    );
                    Down::NotStarted(why)
                }
            };
            if !self.wait(&mut pending, backoff.next_delay(), &down).await {
                return;
            }
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
