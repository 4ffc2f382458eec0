//! An in-process Modbus TCP server (tokio-modbus's server side) with the
//! four tables in memory, for tests and `verge bench drivers`: values can be
//! set and read from outside, holes in the map and whole-unit exceptions can
//! be made, every request is counted, and it can be stopped and started
//! again on the same port.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

use super::plan::Area;

/// Requests kept in [`Sim::log`].
const LOG_LEN: usize = 1024;

/// One request the simulator served: function code, address, quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// Modbus unit id.
    pub unit: u8,
    /// Function code.
    pub function: u8,
    /// First register or bit.
    pub address: u16,
    /// Registers or bits.
    pub count: u16,
}

/// The tables and the behaviour the test asked for.
struct State {
    coils: Vec<bool>,
    discrete: Vec<bool>,
    input: Vec<u16>,
    holding: Vec<u16>,
    /// Addresses that answer "illegal data address".
    holes: BTreeSet<(Area, u16)>,
    /// Units that answer every request with an exception.
    failing: HashMap<u8, ExceptionCode>,
    /// Answer FC 5 and 6 with "illegal function".
    only_multiple: bool,
    requests: u64,
    log: VecDeque<Logged>,
}

/// A running simulator.
pub struct Sim {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: Option<JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sim {
    /// Start on 127.0.0.1 with a free port, every table zero.
    pub async fn start() -> io::Result<Sim> {
        let state = Arc::new(Mutex::new(State {
            coils: vec![false; 65536],
            discrete: vec![false; 65536],
            input: vec![0; 65536],
            holding: vec![0; 65536],
            holes: BTreeSet::new(),
            failing: HashMap::new(),
            only_multiple: false,
            requests: 0,
            log: VecDeque::new(),
        }));
        let mut sim = Sim {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            state,
            task: None,
        };
        sim.resume().await?;
        Ok(sim)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop listening and drop every connection; the tables stay.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listen again, on the same port once it had one.
    pub async fn resume(&mut self) -> io::Result<()> {
        self.stop();
        let listener = TcpListener::bind(self.addr).await?;
        self.addr = listener.local_addr()?;
        let state = self.state.clone();
        self.task = Some(tokio::spawn(async move {
            let server = tokio_modbus::server::tcp::Server::new(listener);
            let on_connected = move |stream, _peer| {
                let svc = Service(state.clone());
                async move { io::Result::Ok(Some((svc, stream))) }
            };
            let _ = server.serve(&on_connected, |_e: io::Error| {}).await;
        }));
        Ok(())
    }

    /// Set holding registers from `address` on.
    pub fn set_holding(&self, address: u16, words: &[u16]) {
        set(&mut lock(&self.state).holding, address, words);
    }

    /// Set input registers from `address` on.
    pub fn set_input(&self, address: u16, words: &[u16]) {
        set(&mut lock(&self.state).input, address, words);
    }

    /// Set a coil.
    pub fn set_coil(&self, address: u16, on: bool) {
        lock(&self.state).coils[usize::from(address)] = on;
    }

    /// Set a discrete input.
    pub fn set_discrete(&self, address: u16, on: bool) {
        lock(&self.state).discrete[usize::from(address)] = on;
    }

    /// `n` holding registers from `address` (fewer past the end).
    pub fn holding(&self, address: u16, n: usize) -> Vec<u16> {
        lock(&self.state)
            .holding
            .iter()
            .skip(usize::from(address))
            .take(n)
            .copied()
            .collect()
    }

    /// A coil.
    pub fn coil(&self, address: u16) -> bool {
        lock(&self.state).coils[usize::from(address)]
    }

    /// Make `address` of `area` answer "illegal data address".
    pub fn add_hole(&self, area: Area, address: u16) {
        lock(&self.state).holes.insert((area, address));
    }

    /// Make `unit` answer every request with `code` (`None`: answer again).
    pub fn fail_unit(&self, unit: u8, code: Option<ExceptionCode>) {
        let mut s = lock(&self.state);
        match code {
            Some(c) => s.failing.insert(unit, c),
            None => s.failing.remove(&unit),
        };
    }

    /// Answer the single-write functions (5, 6) with "illegal function".
    pub fn only_multiple_writes(&self, on: bool) {
        lock(&self.state).only_multiple = on;
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        lock(&self.state).requests
    }

    /// The last requests served, oldest first; clears the log.
    pub fn take_log(&self) -> Vec<Logged> {
        lock(&self.state).log.drain(..).collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

fn set(table: &mut [u16], address: u16, words: &[u16]) {
    for (slot, w) in table.iter_mut().skip(usize::from(address)).zip(words) {
        *slot = *w;
    }
}

/// The tokio-modbus service over the shared state.
struct Service(Arc<Mutex<State>>);

impl tokio_modbus::server::Service for Service {
    type Request = SlaveRequest<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        std::future::ready(serve(&mut lock(&self.0), req.slave, req.request))
    }
}

/// The addresses `address..address + count`, checked against the table's
/// size, the quantity limit and the holes.
fn range(
    s: &State,
    area: Area,
    address: u16,
    count: usize,
    max: usize,
) -> Result<std::ops::Range<usize>, ExceptionCode> {
    if count == 0 || count > max {
        return Err(ExceptionCode::IllegalDataValue);
    }
    let start = usize::from(address);
    if start + count > 65536 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    let last = u16::try_from(start + count - 1).unwrap_or(u16::MAX);
    if s.holes
        .range((area, address)..=(area, last))
        .next()
        .is_some()
    {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(start..start + count)
}

fn serve(s: &mut State, unit: u8, req: Request<'static>) -> Result<Response, ExceptionCode> {
    let (address, count) = match &req {
        Request::ReadCoils(a, n)
        | Request::ReadDiscreteInputs(a, n)
        | Request::ReadInputRegisters(a, n)
        | Request::ReadHoldingRegisters(a, n) => (*a, *n),
        Request::WriteSingleCoil(a, _) | Request::WriteSingleRegister(a, _) => (*a, 1),
        Request::WriteMultipleCoils(a, v) => (*a, u16::try_from(v.len()).unwrap_or(u16::MAX)),
        Request::WriteMultipleRegisters(a, v) => (*a, u16::try_from(v.len()).unwrap_or(u16::MAX)),
        _ => (0, 0),
    };
    s.requests += 1;
    if s.log.len() == LOG_LEN {
        s.log.pop_front();
    }
    s.log.push_back(Logged {
        unit,
        function: req.function_code().value(),
        address,
        count,
    });
    if let Some(code) = s.failing.get(&unit) {
        return Err(*code);
    }
    let n = usize::from(count);
    match req {
        Request::ReadCoils(a, _) => {
            let r = range(s, Area::Coil, a, n, 2000)?;
            Ok(Response::ReadCoils(s.coils[r].to_vec()))
        }
        Request::ReadDiscreteInputs(a, _) => {
            let r = range(s, Area::DiscreteInput, a, n, 2000)?;
            Ok(Response::ReadDiscreteInputs(s.discrete[r].to_vec()))
        }
        Request::ReadInputRegisters(a, _) => {
            let r = range(s, Area::InputRegister, a, n, 125)?;
            Ok(Response::ReadInputRegisters(s.input[r].to_vec()))
        }
        Request::ReadHoldingRegisters(a, _) => {
            let r = range(s, Area::HoldingRegister, a, n, 125)?;
            Ok(Response::ReadHoldingRegisters(s.holding[r].to_vec()))
        }
        Request::WriteSingleCoil(..) | Request::WriteSingleRegister(..) if s.only_multiple => {
            Err(ExceptionCode::IllegalFunction)
        }
        Request::WriteSingleCoil(a, v) => {
            let r = range(s, Area::Coil, a, 1, 1)?;
            s.coils[r.start] = v;
            Ok(Response::WriteSingleCoil(a, v))
        }
        Request::WriteSingleRegister(a, v) => {
            let r = range(s, Area::HoldingRegister, a, 1, 1)?;
            s.holding[r.start] = v;
            Ok(Response::WriteSingleRegister(a, v))
        }
        Request::WriteMultipleCoils(a, v) => {
            let r = range(s, Area::Coil, a, n, 1968)?;
            s.coils[r].copy_from_slice(&v);
            Ok(Response::WriteMultipleCoils(a, count))
        }
        Request::WriteMultipleRegisters(a, v) => {
            let r = range(s, Area::HoldingRegister, a, n, 123)?;
            s.holding[r].copy_from_slice(&v);
            Ok(Response::WriteMultipleRegisters(a, count))
        }
        _ => Err(ExceptionCode::IllegalFunction),
    }
}
