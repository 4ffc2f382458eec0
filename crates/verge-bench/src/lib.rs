//! `verge bench`: load generators that measure a broker (Verge or any other
//! MQTT broker) from the outside, over TCP, with our own codec.
//!
//! Each subcommand is a module with its clap `Args` struct and a `run`
//! that prints the report; the `verge` binary only names the subcommands
//! and calls `run`. Nothing in the node or the cloud depends on this crate
//! (it depends on the cloud for `ingest` and `fleet`, which its `cloud`
//! feature builds).
//!
//! - [`broker`]: publish/subscribe throughput and end-to-end latency.
//! - [`connections`]: broker memory per idle connection.
//! - [`rules`]: the rule engine, in-process and through an in-process broker.
//! - [`queue`]: the cache queue's durable appends and read-back on this
//!   disk, and the drain of a backlog through the cloud link ([`drain`]).
//! - [`functions`]: edge function calls, WebAssembly and process runtimes.
//! - [`drivers`]: the Modbus driver's points/s, CPU and memory against an
//!   in-process simulator.
//! - [`startup`]: `verge node`'s time from exec to its first CONNACK,
//!   and its idle memory (any `verge` binary, e.g. an edge-only build).
//! - `ingest` (feature `cloud`): stored upstream messages/s through the cloud's ingest
//!   path, SQLite and PostgreSQL.
//! - `fleet` (feature `cloud`): simulated nodes against `verge cloud` replicas it starts:
//!   join rate, heartbeat/long-poll/command latency, ingest, CPU and RSS.

pub mod broker;
pub mod client;
pub mod connections;
pub mod drain;
pub mod drivers;
#[cfg(feature = "cloud")]
pub mod fleet;
pub mod functions;
#[cfg(feature = "cloud")]
pub mod ingest;
mod pubsub;
pub mod queue;
mod report;
pub mod rules;
pub mod startup;

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use verge_broker::{Broker, BrokerConfig};
use verge_mqtt::Protocol;

/// Where the broker under test is.
#[derive(Debug, Args)]
pub struct Target {
    /// Host of an already running broker.
    #[arg(long, default_value = "127.0.0.1", conflicts_with = "spawn")]
    pub host: String,
    /// Port of an already running broker [default: 1883].
    #[arg(long, conflicts_with = "spawn")]
    pub port: Option<u16>,
    /// Start a broker for the run instead (on 127.0.0.1, a free port,
    /// anonymous clients allowed, no $SYS).
    #[arg(long, value_enum)]
    pub spawn: Option<SpawnKind>,
}

impl Target {
    /// The external broker's address.
    pub fn external_addr(&self) -> anyhow::Result<SocketAddr> {
        let port = self.port.unwrap_or(1883);
        (self.host.as_str(), port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}:{port}", self.host))?
            .next()
            .with_context(|| format!("{}:{port} resolves to no address", self.host))
    }
}

/// Brokers the bench can start by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SpawnKind {
    /// Verge itself.
    Verge,
}

/// MQTT protocol version of the bench clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// MQTT 3.1.1.
    #[value(name = "3")]
    V3,
    /// MQTT 5.0.
    #[value(name = "5")]
    V5,
}

impl ProtocolArg {
    /// The codec's protocol.
    pub fn protocol(self) -> Protocol {
        match self {
            ProtocolArg::V3 => Protocol::V311,
            ProtocolArg::V5 => Protocol::V5,
        }
    }

    /// For reports.
    pub fn label(self) -> &'static str {
        match self {
            ProtocolArg::V3 => "3.1.1",
            ProtocolArg::V5 => "5.0",
        }
    }
}

/// The broker config a spawned Verge runs with: defaults, plain TCP on
/// 127.0.0.1 only, anonymous clients, no `$SYS` traffic.
pub fn spawned_config(port: u16) -> BrokerConfig {
    let mut cfg = BrokerConfig {
        allow_anonymous: true,
        sys_interval: verge_broker::duration::HumanDuration(std::time::Duration::ZERO),
        ..BrokerConfig::default()
    };
    cfg.listeners.tcp.enabled = true;
    cfg.listeners.tcp.bind = SocketAddr::from(([127, 0, 0, 1], port));
    cfg.listeners.ws.enabled = false;
    cfg.listeners.tls.enabled = false;
    cfg.listeners.wss.enabled = false;
    cfg
}

/// A Verge broker started inside this process, on its own runtime so the
/// load generator's tasks do not share worker threads with it.
pub struct InProcessBroker {
    /// Keeps the broker's worker threads alive.
    runtime: tokio::runtime::Runtime,
    /// The broker.
    broker: Broker,
    /// Where its TCP listener is.
    pub addr: SocketAddr,
}

impl InProcessBroker {
    /// Start on 127.0.0.1 with a free port. Call outside any runtime.
    pub fn start() -> anyhow::Result<InProcessBroker> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("verge-broker")
            .build()
            .context("starting the broker's runtime")?;
        let (broker, addr) = runtime.block_on(async {
            let cfg = spawned_config(0);
            let auth = Broker::authenticator(&cfg).context("broker authenticator")?;
            let listeners = verge_broker::bind_all(&cfg.listeners)
                .await
                .context("binding the broker")?;
            let mut broker = Broker::start(cfg, auth);
            let mut addr = None;
            for l in listeners {
                addr = Some(l.local_addr().context("listener address")?);
                broker.serve(l);
            }
            let addr = addr.context("the spawned broker has no TCP listener")?;
            anyhow::Ok((broker, addr))
        })?;
        Ok(InProcessBroker {
            runtime,
            broker,
            addr,
        })
    }

    /// The broker's in-process API.
    pub fn handle(&self) -> verge_broker::BrokerHandle {
        self.broker.handle()
    }

    /// Run `f` on the broker's runtime, so the tasks it spawns (a rule
    /// engine's) share the broker's workers as they do in a node. Call
    /// outside any runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The broker's counters.
    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        self.broker.handle().stats().snapshot()
    }

    /// Shut the broker down and stop its runtime.
    pub fn stop(self) {
        let InProcessBroker {
            runtime, broker, ..
        } = self;
        runtime.block_on(broker.shutdown());
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    }
}

/// Make sure this process may open `needed` file descriptors: raise the soft
/// RLIMIT_NOFILE to the hard limit, and the hard limit too when allowed.
pub fn ensure_nofile(needed: u64) -> anyhow::Result<()> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().context("reading RLIMIT_NOFILE")?;
    if soft >= needed {
        return Ok(());
    }
    if hard >= needed {
        Resource::NOFILE
            .set(hard, hard)
            .context("raising RLIMIT_NOFILE")?;
        return Ok(());
    }
    if Resource::NOFILE.set(needed, needed).is_ok() {
        return Ok(());
    }
    bail!(
        "need {needed} open files but the limit is {soft} (hard {hard}); raise it first, e.g. `ulimit -n {needed}` \
         (as root, or after raising the hard limit in /etc/security/limits.conf)"
    )
}

/// `12345678` → `12,345,678`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }

    #[test]
    fn spawned_config_is_tcp_only_and_anonymous() {
        let cfg = spawned_config(1999);
        assert!(cfg.allow_anonymous);
        assert!(cfg.sys_interval.get().is_zero());
        assert_eq!(cfg.listeners.tcp.bind.port(), 1999);
        assert!(
            !cfg.listeners.ws.enabled && !cfg.listeners.tls.enabled && !cfg.listeners.wss.enabled
        );
    }
}
