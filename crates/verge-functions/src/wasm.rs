//! The WebAssembly runtime: `wasmi` (an interpreter with fuel metering).
//!
//! A module is parsed, validated and checked against the ABI once
//! ([`WasmModule::new`]); [`WasmRuntime::new`] creates the first instance
//! right away so that a module which fails to start is refused at deploy.
//! Instances are kept in a pool of at most `concurrency` and reused for
//! every call; one is discarded only after a call trapped, ran out of fuel or
//! hit the memory limit (its memory may be inconsistent then).
//!
//! Where a call runs: a function whose calls stay under [`INLINE_FUEL`]
//! runs inline on the caller's task (no thread hand-off: the common, short
//! call costs microseconds); after a call that used more, the function's
//! next calls go to tokio's blocking pool, so long calls never hold the
//! node's network tasks. Fuel bounds every call either way.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Semaphore;
use wasmi::{
    Caller, Config, Engine, Extern, ExternType, Linker, Memory, Module, Store, StoreLimits,
    StoreLimitsBuilder, TrapCode, TypedFunc, ValType,
};

use crate::abi;
use crate::message::{CallError, Message, now_ms};
use crate::runtime::{BoxFuture, HostContext, Runtime};
use crate::state::SetError;

/// How long `shutdown` waits for calls in progress.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest log line a function may write.
const MAX_LOG_LINE: usize = 4096;

/// The engine every module and store shares (fuel metering on).
fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut c = Config::default();
        c.consume_fuel(true);
        Engine::new(&c)
    })
}

/// The host functions a module may import, with their signatures.
const IMPORTS: &[(&str, &[ValType], &[ValType])] = &[
    ("log", &[ValType::I32, ValType::I32, ValType::I32], &[]),
    ("config", &[ValType::I32, ValType::I32], &[ValType::I32]),
    (
        "kv_get",
        &[ValType::I32, ValType::I32, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    (
        "kv_set",
        &[ValType::I32, ValType::I32, ValType::I32, ValType::I32],
        &[ValType::I32],
    ),
    ("kv_delete", &[ValType::I32, ValType::I32], &[ValType::I32]),
];

/// The functions a module must (or may) export.
const EXPORTS: &[(&str, &[ValType], &[ValType], bool)] = &[
    ("verge_abi_version", &[], &[ValType::I32], true),
    ("verge_alloc", &[ValType::I32], &[ValType::I32], true),
    (
        "verge_handle",
        &[ValType::I32, ValType::I32],
        &[ValType::I64],
        true,
    ),
    ("verge_init", &[], &[ValType::I32], false),
];

/// A validated module, ready to be instantiated.
pub struct WasmModule {
    module: Module,
    has_init: bool,
    size: usize,
}

impl WasmModule {
    /// Parse (binary `.wasm` or `.wat` text), validate and check the module
    /// against the ABI. The error says what is wrong in terms a function
    /// author can act on.
    pub fn new(bytes: &[u8]) -> Result<WasmModule, String> {
        if bytes.is_empty() {
            return Err("the module is empty".into());
        }
        // Binary modules start with `\0asm`; anything else must be WAT text.
        if !bytes.starts_with(b"\0asm") && std::str::from_utf8(bytes).is_err() {
            return Err(
                "not a WebAssembly module: binary modules start with \\0asm, and this is not \
                 WAT text either (not UTF-8)"
                    .into(),
            );
        }
        let module = std::panic::catch_unwind(AssertUnwindSafe(|| Module::new(engine(), bytes)))
            .map_err(|_| "the module could not be parsed (the parser gave up)".to_string())?
            .map_err(|e| format!("not a valid WebAssembly module: {}", cut(&e.to_string())))?;
        for imp in module.imports() {
            let known = IMPORTS.iter().find(|(n, _, _)| *n == imp.name());
            let ok = imp.module() == "verge"
                && match (known, imp.ty().func()) {
                    (Some((_, p, r)), Some(ty)) => ty.params() == *p && ty.results() == *r,
                    _ => false,
                };
            if !ok {
                return Err(format!(
                    "the module imports `{}::{}` ({}), which Verge does not provide; \
                     a function may import only verge::{{log, config, kv_get, kv_set, kv_delete}} \
                     with the signatures in docs/functions.md (build Rust for wasm32-unknown-unknown, not WASI)",
                    imp.module(),
                    imp.name(),
                    describe(imp.ty())
                ));
            }
        }
        let mut has_memory = false;
        let mut has_init = false;
        for (name, params, results, required) in EXPORTS {
            let found = module.exports().find(|e| e.name() == *name);
            match found.as_ref().map(|e| e.ty().func()) {
                Some(Some(ty)) if ty.params() == *params && ty.results() == *results => {
                    has_init |= *name == "verge_init";
                }
                Some(_) => {
                    return Err(format!(
                        "export `{name}` has the wrong type: expected a function ({}) -> ({})",
                        types(params),
                        types(results)
                    ));
                }
                None if *required => {
                    return Err(format!(
                        "the module does not export `{name}`; see docs/functions.md (the verge-function \
                         crate's export! macro provides it)"
                    ));
                }
                None => {}
            }
        }
        for e in module.exports() {
            if e.name() == "memory" && e.ty().memory().is_some() {
                has_memory = true;
            }
        }
        if !has_memory {
            return Err("the module does not export its memory as `memory`".into());
        }
        Ok(WasmModule {
            module,
            has_init,
            size: bytes.len(),
        })
    }

    /// Size of the artifact in bytes.
    pub fn size(&self) -> usize {
        self.size
    }
}

/// At most 1 KiB of an error message (a WAT error quotes the source).
fn cut(s: &str) -> String {
    if s.len() <= 1024 {
        return s.to_owned();
    }
    let mut end = 1024;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … (cut)", &s[..end])
}

fn types(t: &[ValType]) -> String {
    t.iter()
        .map(|v| format!("{v:?}").to_lowercase())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(t: &ExternType) -> String {
    match t {
        ExternType::Func(f) => format!(
            "function ({}) -> ({})",
            types(f.params()),
            types(f.results())
        ),
        ExternType::Memory(_) => "a memory".into(),
        ExternType::Table(_) => "a table".into(),
        ExternType::Global(_) => "a global".into(),
    }
}

/// What host functions see.
struct Host {
    ctx: HostContext,
    limits: StoreLimits,
    /// Set by `kv`/`log` when a pointer was out of bounds, for the error.
    fault: Option<String>,
    /// Set when a host call ran out of fuel.
    out_of_fuel: bool,
    /// Log lines written in this call.
    log_lines: u32,
}

/// Log lines one call may write; more are dropped.
const MAX_LOG_LINES: u32 = 100;

/// Charge a host call's work to the call's fuel: one unit plus one per 8
/// bytes it reads or copies, so that a loop over host calls with large
/// arguments runs out of fuel like any other loop.
fn charge(caller: &mut Caller<'_, Host>, bytes: usize) -> Result<(), wasmi::Error> {
    let cost = 1 + (bytes as u64) / 8;
    let left = caller.get_fuel().unwrap_or(0);
    if left < cost {
        let _ = caller.set_fuel(0);
        caller.data_mut().out_of_fuel = true;
        return Err(wasmi::Error::new("out of fuel in a host call"));
    }
    caller.set_fuel(left - cost)
}

/// A call that used more fuel than this (roughly a millisecond of
/// interpretation) sends the function's next [`OFFLOAD_CALLS`] calls to the
/// blocking pool; calls of functions that stay under it run inline, on the
/// caller's task, with no thread hand-off. A function that suddenly loops
/// can so hold one runtime thread for one call's fuel, at most once per
/// [`OFFLOAD_CALLS`] calls.
const INLINE_FUEL: u64 = 200_000;

/// See [`INLINE_FUEL`].
const OFFLOAD_CALLS: u64 = 1000;

/// Functions allowed more fuel per call than this (about 0.1 s) never run
/// inline: one surprise-long call could otherwise hold a runtime thread
/// for long.
const MAX_INLINE_LIMIT: u64 = 100_000_000;

/// Run `f`, turning a panic (inside wasmi, which is large) into a trap:
/// nothing a module does may take the node down.
fn guarded<T>(f: impl FnOnce() -> Result<T, CallError>) -> Result<T, CallError> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(CallError::Trap("the interpreter panicked".into())))
}

/// One instance with its store.
struct Instance {
    store: Store<Host>,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    handle: TypedFunc<(i32, i32), i64>,
    input: Vec<u8>,
    /// Memory size last accounted for in `WasmRuntime::memory`.
    accounted: u64,
}

/// Run `f` on the blocking pool.
async fn blocking(
    f: impl FnOnce() -> Result<Vec<Message>, CallError> + Send + 'static,
) -> Result<Vec<Message>, CallError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(CallError::Trap(format!(
            "the call panicked in the host: {e}"
        ))),
    }
}

/// One deployed wasm function version.
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    module: WasmModule,
    linker: Linker<Host>,
    ctx: HostContext,
    idle: Mutex<Vec<Instance>>,
    permits: Arc<Semaphore>,
    concurrency: u32,
    memory: AtomicU64,
    closed: AtomicBool,
    /// Calls still to send to the blocking pool (see [`INLINE_FUEL`]).
    offload: AtomicU64,
}

impl WasmRuntime {
    /// Prepare `module` for `ctx`'s function and create its first instance
    /// (running `verge_init`), so a module that cannot start is refused here.
    pub fn new(module: WasmModule, ctx: HostContext) -> Result<WasmRuntime, String> {
        let concurrency = ctx.limits.concurrency_for(crate::RuntimeKind::Wasm) as u32;
        let inner = Inner {
            linker: linker()?,
            module,
            permits: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
            ctx,
            idle: Mutex::new(Vec::new()),
            memory: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            offload: AtomicU64::new(0),
        };
        let first = inner.instantiate().map_err(|e| e.to_string())?;
        inner.put_back(first);
        Ok(WasmRuntime {
            inner: Arc::new(inner),
        })
    }

    /// Run one call on this thread (benchmarks and callers already on a
    /// blocking thread). Waits for no permit: the caller bounds concurrency.
    pub fn call_blocking(&self, msg: &Message) -> Result<Vec<Message>, CallError> {
        self.inner.call_now(msg)
    }
}

impl Runtime for WasmRuntime {
    fn call(&self, msg: Message) -> BoxFuture<'_, Result<Vec<Message>, CallError>> {
        Box::pin(async move {
            let inner = self.inner.clone();
            if inner.closed.load(Ordering::Acquire) {
                return Err(CallError::Unavailable(
                    "the function is shutting down".into(),
                ));
            }
            let permit = inner
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| CallError::Unavailable("the function is shutting down".into()))?;
            let big = inner.ctx.limits.fuel > MAX_INLINE_LIMIT;
            let offloaded = inner
                .offload
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if big || offloaded {
                return blocking(move || {
                    let r = inner.call_now(&msg);
                    drop(permit);
                    r
                })
                .await;
            }
            let popped = inner.lock_idle().pop();
            let Some(inst) = popped else {
                // Creating an instance runs the module's start code: off
                // the caller's task.
                return blocking(move || {
                    let r = inner.call_now(&msg);
                    drop(permit);
                    r
                })
                .await;
            };
            let r = inner.call_on(inst, &msg);
            drop(permit);
            r
        })
    }

    fn memory_bytes(&self) -> u64 {
        self.inner.memory.load(Ordering::Relaxed)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.inner.closed.store(true, Ordering::Release);
            // Wait for calls in progress (they hold permits), for a while:
            // fuel bounds them, but not to any particular time.
            let all = self.inner.permits.acquire_many(self.inner.concurrency);
            if let Ok(Ok(all)) = tokio::time::timeout(SHUTDOWN_GRACE, all).await {
                all.forget();
            }
            self.inner.permits.close();
            let dropped: Vec<Instance> = std::mem::take(&mut *self.inner.lock_idle());
            for i in &dropped {
                self.inner.memory.fetch_sub(i.accounted, Ordering::Relaxed);
            }
        })
    }
}

impl Inner {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_back(&self, mut i: Instance) {
        let now = i.memory.data_size(&i.store) as u64;
        if now >= i.accounted {
            self.memory.fetch_add(now - i.accounted, Ordering::Relaxed);
        } else {
            self.memory.fetch_sub(i.accounted - now, Ordering::Relaxed);
        }
        i.accounted = now;
        self.lock_idle().push(i);
    }

    fn discard(&self, i: Instance) {
        self.memory.fetch_sub(i.accounted, Ordering::Relaxed);
    }

    fn call_now(&self, msg: &Message) -> Result<Vec<Message>, CallError> {
        let popped = self.lock_idle().pop();
        let inst = match popped {
            Some(i) => i,
            None => self.instantiate()?,
        };
        self.call_on(inst, msg)
    }

    /// One call on `inst`, which goes back to the pool if the call left it
    /// sound, or is dropped if its memory may be inconsistent.
    fn call_on(&self, mut inst: Instance, msg: &Message) -> Result<Vec<Message>, CallError> {
        let result = guarded(|| self.run(&mut inst, msg));
        let used = self
            .ctx
            .limits
            .fuel
            .saturating_sub(inst.store.get_fuel().unwrap_or(0));
        if used > INLINE_FUEL {
            self.offload.store(OFFLOAD_CALLS, Ordering::Relaxed);
        }
        match &result {
            Ok(_) | Err(CallError::Returned(_)) | Err(CallError::BadOutput(_)) => {
                self.put_back(inst)
            }
            Err(_) => self.discard(inst),
        }
        result
    }

    fn run(&self, inst: &mut Instance, msg: &Message) -> Result<Vec<Message>, CallError> {
        inst.store
            .set_fuel(self.ctx.limits.fuel)
            .map_err(|e| CallError::Unavailable(e.to_string()))?;
        let host = inst.store.data_mut();
        host.fault = None;
        host.out_of_fuel = false;
        host.log_lines = 0;
        abi::encode_input(msg, &mut inst.input);
        let len = i32::try_from(inst.input.len())
            .map_err(|_| CallError::Unavailable("the message is larger than 2 GiB".into()))?;
        let ptr = inst
            .alloc
            .call(&mut inst.store, len)
            .map_err(|e| self.trap(inst, e))?;
        if ptr == 0 && len > 0 {
            return Err(CallError::Trap(format!(
                "verge_alloc({len}) returned 0 (out of memory; limit {} bytes)",
                self.ctx.limits.memory
            )));
        }
        inst.memory
            .write(&mut inst.store, ptr as u32 as usize, &inst.input)
            .map_err(|_| {
                CallError::Trap(format!(
                    "verge_alloc({len}) returned {ptr}, outside the memory"
                ))
            })?;
        let packed = inst
            .handle
            .call(&mut inst.store, (ptr, len))
            .map_err(|e| self.trap(inst, e))?;
        let out_ptr = (packed as u64 >> 32) as usize;
        let out_len = (packed as u64 & 0xffff_ffff) as usize;
        let data = inst.memory.data(&inst.store);
        let out = out_ptr
            .checked_add(out_len)
            .and_then(|end| data.get(out_ptr..end))
            .ok_or_else(|| {
                CallError::BadOutput(format!(
                    "output at {out_ptr}+{out_len} is outside the memory ({} bytes)",
                    data.len()
                ))
            })?;
        abi::decode_output(out, msg.time_ms.max(now_ms()))
    }

    /// Turn a wasmi error into a call error, naming the limit that was hit.
    fn trap(&self, inst: &Instance, e: wasmi::Error) -> CallError {
        if inst.store.data().out_of_fuel {
            return CallError::OutOfFuel(self.ctx.limits.fuel);
        }
        if let Some(fault) = &inst.store.data().fault {
            return CallError::Trap(fault.clone());
        }
        match e.as_trap_code() {
            Some(TrapCode::OutOfFuel) => CallError::OutOfFuel(self.ctx.limits.fuel),
            Some(code) => {
                let size = inst.memory.data_size(&inst.store) as u64;
                let limit = self.ctx.limits.memory;
                // A grow refused by the limit shows up as whatever the
                // guest does next (usually `unreachable` from its allocator).
                if size + (64 << 10) > limit {
                    CallError::Trap(format!(
                        "{code} (memory limit of {limit} bytes reached: {size} in use)"
                    ))
                } else {
                    CallError::Trap(code.to_string())
                }
            }
            None => CallError::Trap(e.to_string()),
        }
    }

    fn instantiate(&self) -> Result<Instance, CallError> {
        let unavailable =
            |what: &str, e: &dyn std::fmt::Display| CallError::Unavailable(format!("{what}: {e}"));
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(self.ctx.limits.memory).unwrap_or(usize::MAX))
            .instances(1)
            .memories(1)
            .tables(4)
            .table_elements(100_000)
            .build();
        let host = Host {
            ctx: self.ctx.clone(),
            limits,
            fault: None,
            out_of_fuel: false,
            log_lines: 0,
        };
        let mut store = Store::new(engine(), host);
        store.limiter(|h| &mut h.limits);
        store
            .set_fuel(self.ctx.limits.fuel)
            .map_err(|e| unavailable("fuel", &e))?;
        let instance = self
            .linker
            .instantiate_and_start(&mut store, &self.module.module)
            .map_err(|e| match e.as_trap_code() {
                Some(TrapCode::OutOfFuel) => CallError::OutOfFuel(self.ctx.limits.fuel),
                _ => unavailable("the module could not be instantiated", &e),
            })?;
        let memory = instance
            .get_memory(&store, "memory")
            .ok_or_else(|| CallError::Unavailable("no `memory` export".into()))?;
        let version = instance
            .get_typed_func::<(), i32>(&store, "verge_abi_version")
            .and_then(|f| f.call(&mut store, ()))
            .map_err(|e| unavailable("verge_abi_version", &e))?;
        if version != abi::VERSION {
            return Err(CallError::Unavailable(format!(
                "the module speaks ABI version {version}; this node speaks {}",
                abi::VERSION
            )));
        }
        if self.module.has_init {
            let status = instance
                .get_typed_func::<(), i32>(&store, "verge_init")
                .and_then(|f| f.call(&mut store, ()))
                .map_err(|e| unavailable("verge_init trapped", &e))?;
            if status != 0 {
                return Err(CallError::Unavailable(format!(
                    "verge_init returned {status}"
                )));
            }
        }
        let alloc = instance
            .get_typed_func::<i32, i32>(&store, "verge_alloc")
            .map_err(|e| unavailable("verge_alloc", &e))?;
        let handle = instance
            .get_typed_func::<(i32, i32), i64>(&store, "verge_handle")
            .map_err(|e| unavailable("verge_handle", &e))?;
        let accounted = memory.data_size(&store) as u64;
        self.memory.fetch_add(accounted, Ordering::Relaxed);
        Ok(Instance {
            store,
            memory,
            alloc,
            handle,
            input: Vec::new(),
            accounted,
        })
    }
}

/// A bounds-checked range of the caller's memory.
fn range(
    caller: &mut Caller<'_, Host>,
    ptr: i32,
    len: i32,
) -> Result<(Memory, usize, usize), wasmi::Error> {
    let memory = caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .ok_or_else(|| wasmi::Error::new("no `memory` export"))?;
    let (p, l) = (ptr as u32 as usize, len as u32 as usize);
    let size = memory.data_size(&*caller);
    if p.checked_add(l).is_none_or(|end| end > size) {
        let msg = format!("a host call got the range {p}+{l}, outside the memory ({size} bytes)");
        caller.data_mut().fault = Some(msg.clone());
        return Err(wasmi::Error::new(msg));
    }
    Ok((memory, p, l))
}

fn read_string(caller: &mut Caller<'_, Host>, ptr: i32, len: i32) -> Result<String, wasmi::Error> {
    let (m, p, l) = range(caller, ptr, len)?;
    Ok(String::from_utf8_lossy(&m.data(&*caller)[p..p + l]).into_owned())
}

/// Copy `value` to `ptr` (up to `cap` bytes); returns its full length.
fn copy_out(
    caller: &mut Caller<'_, Host>,
    value: &[u8],
    ptr: i32,
    cap: i32,
) -> Result<i32, wasmi::Error> {
    let (m, p, l) = range(caller, ptr, cap)?;
    let n = value.len().min(l);
    m.data_mut(&mut *caller)[p..p + n].copy_from_slice(&value[..n]);
    i32::try_from(value.len()).map_err(|_| wasmi::Error::new("value larger than 2 GiB"))
}

fn linker() -> Result<Linker<Host>, String> {
    let mut l = Linker::<Host>::new(engine());
    fn e(e: impl std::fmt::Display) -> String {
        e.to_string()
    }
    l.func_wrap(
        "verge",
        "log",
        |mut c: Caller<'_, Host>, level: i32, ptr: i32, len: i32| -> Result<(), wasmi::Error> {
            let len = len.clamp(0, MAX_LOG_LINE as i32);
            charge(&mut c, len as usize)?;
            c.data_mut().log_lines += 1;
            if c.data().log_lines > MAX_LOG_LINES {
                return Ok(());
            }
            let mut line = read_string(&mut c, ptr, len)?;
            line.retain(|ch| ch != '\n' && ch != '\r');
            let f = &*c.data().ctx.name;
            match level {
                i32::MIN..=0 => tracing::error!(function = f, "{line}"),
                1 => tracing::warn!(function = f, "{line}"),
                2 => tracing::info!(function = f, "{line}"),
                3 => tracing::debug!(function = f, "{line}"),
                _ => tracing::trace!(function = f, "{line}"),
            }
            Ok(())
        },
    )
    .map_err(e)?;
    l.func_wrap(
        "verge",
        "config",
        |mut c: Caller<'_, Host>, ptr: i32, cap: i32| -> Result<i32, wasmi::Error> {
            let config = c.data().ctx.config.clone();
            charge(&mut c, config.len().min(cap.max(0) as usize))?;
            copy_out(&mut c, config.as_bytes(), ptr, cap)
        },
    )
    .map_err(e)?;
    l.func_wrap(
        "verge",
        "kv_get",
        |mut c: Caller<'_, Host>,
         kp: i32,
         kl: i32,
         vp: i32,
         vcap: i32|
         -> Result<i32, wasmi::Error> {
            if kl as u32 as usize > crate::MAX_KEY {
                return Ok(-2);
            }
            charge(&mut c, kl as usize)?;
            let key = read_string(&mut c, kp, kl)?;
            let state = c.data().ctx.state.clone();
            let (m, p, cap) = range(&mut c, vp, vcap)?;
            let dst = m.data_mut(&mut c);
            state.with(&key, |v| match v {
                Some(v) => {
                    let n = v.len().min(cap);
                    dst[p..p + n].copy_from_slice(&v[..n]);
                    i32::try_from(v.len()).map_err(|_| wasmi::Error::new("value larger than 2 GiB"))
                }
                None => Ok(-1),
            })
        },
    )
    .map_err(e)?;
    l.func_wrap(
        "verge",
        "kv_set",
        |mut c: Caller<'_, Host>,
         kp: i32,
         kl: i32,
         vp: i32,
         vl: i32|
         -> Result<i32, wasmi::Error> {
            if kl as u32 as usize > crate::MAX_KEY {
                return Ok(-2);
            }
            charge(&mut c, kl as usize + vl.max(0) as usize)?;
            let key = read_string(&mut c, kp, kl)?;
            let (m, p, n) = range(&mut c, vp, vl)?;
            let state = c.data().ctx.state.clone();
            Ok(match state.set(&key, &m.data(&c)[p..p + n]) {
                Ok(()) => 0,
                Err(SetError::Quota) => -1,
                Err(SetError::KeyTooLong) => -2,
            })
        },
    )
    .map_err(e)?;
    l.func_wrap(
        "verge",
        "kv_delete",
        |mut c: Caller<'_, Host>, kp: i32, kl: i32| -> Result<i32, wasmi::Error> {
            if kl as u32 as usize > crate::MAX_KEY {
                return Ok(-2);
            }
            charge(&mut c, kl as usize)?;
            let key = read_string(&mut c, kp, kl)?;
            Ok(i32::from(c.data().ctx.state.delete(&key)))
        },
    )
    .map_err(e)?;
    Ok(l)
}
