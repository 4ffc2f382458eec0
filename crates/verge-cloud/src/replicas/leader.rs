//! Leadership among the replicas on one database: the leader runs the
//! singleton jobs (retention pruning, the rollout driver); the others
//! serve the API and the nodes as usual.
//!
//! PostgreSQL: the leader is the replica holding a session advisory lock
//! (`pg_try_advisory_lock`) on a connection of its own, outside the pool.
//! Others try again every few seconds. The leader pings its connection
//! every second; when the ping fails (or hangs) it stops leading at once,
//! and when the connection dies the server releases the lock, so another
//! replica takes over; the lock session's TCP keepalive and user timeout
//! ([`DEAD_CLIENT_SETTINGS`]) make the server notice a vanished replica's
//! half-open connection within about 30 s. A replica that stops closes the
//! connection, which hands the lock over at once. SQLite: the one process always leads.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;

use crate::Cloud;

/// The advisory lock's key (any fixed number; locks are per database).
const LOCK_KEY: i64 = 0x7665_7267_6531;
/// A replica that does not lead tries to take the lock this often.
const TRY_EVERY: Duration = Duration::from_secs(3);
/// The leader checks its lock connection this often.
const PING_EVERY: Duration = Duration::from_secs(1);
/// A ping or lock attempt slower than this counts as a lost connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Server-side settings of the lock session: a replica that vanished
/// without closing its connection (power loss, a network cut) leaves a
/// half-open connection, and the server would keep its lock until the
/// kernel's keepalive gives up (hours). With these the server probes an
/// idle connection after 10 s, every 5 s, and drops it after 3 missed
/// probes; unacknowledged data gives up after 30 s. So the lock passes on
/// within about 30 s. (Ignored on a Unix-socket connection.)
const DEAD_CLIENT_SETTINGS: [(&str, &str); 4] = [
    ("tcp_keepalives_idle", "10"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "30000"),
];

/// Whether this replica leads: the gate of the singleton jobs.
pub struct Leadership {
    tx: watch::Sender<bool>,
}

impl Leadership {
    /// `leads` at start: true for the one process on SQLite; false on
    /// PostgreSQL until [`run`] takes the lock.
    pub fn new(leads: bool) -> Leadership {
        Leadership {
            tx: watch::channel(leads).0,
        }
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.tx.borrow()
    }

    /// Changes of [`Leadership::is_leader`].
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Stop leading because this replica stops (logged quietly: a clean
    /// stop is no loss of leadership).
    fn resign(&self) {
        if self.tx.send_replace(false) {
            tracing::info!("this replica stops leading (it is stopping)");
        }
    }

    fn set(&self, leads: bool) {
        let was = self.tx.send_replace(leads);
        if was != leads {
            if leads {
                tracing::info!("this replica leads (runs pruning and rollouts)");
            } else {
                tracing::warn!("this replica no longer leads");
            }
        }
    }
}

/// Take and hold leadership until the cloud stops (the task of
/// `Cloud::open`).
pub async fn run(cloud: Cloud) {
    let inner = cloud.inner();
    if !crate::db::is_postgres(&inner.cfg.database_url()) {
        return; // SQLite: leads from the start
    }
    let mut stop = inner.stop.subscribe();
    let options = match PgConnectOptions::from_str(&inner.cfg.database_url()) {
        Ok(o) => o
            .application_name(&application_name(&inner.replica.id))
            .options(DEAD_CLIENT_SETTINGS),
        Err(e) => {
            tracing::error!("cloud.database: cannot take part in leadership: {e}");
            return;
        }
    };
    loop {
        match options.connect().await {
            Ok(conn) => {
                let stopped = hold(&cloud, conn, &mut stop).await;
                inner.leader.set(false);
                if stopped {
                    return;
                }
            }
            Err(e) => tracing::warn!("leadership connection failed: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(TRY_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The `application_name` of a replica's lock connection (seen in
/// `pg_stat_activity`).
pub fn application_name(replica: &str) -> String {
    format!("verge-cloud-leader {replica}")
}

/// Try for and hold the lock on `conn` until the connection fails (false)
/// or the cloud stops (true; the connection is closed, releasing the
/// lock).
async fn hold(cloud: &Cloud, mut conn: PgConnection, stop: &mut watch::Receiver<bool>) -> bool {
    let leader = &cloud.inner().leader;
    loop {
        let step = async {
            if leader.is_leader() {
                conn.ping().await
            } else {
                let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                    .bind(LOCK_KEY)
                    .fetch_one(&mut conn)
                    .await?;
                if got {
                    leader.set(true);
                }
                Ok(())
            }
        };
        match tokio::time::timeout(IO_TIMEOUT, step).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!("leadership connection failed: {e}");
                return false;
            }
            Err(_) => {
                tracing::warn!("leadership connection does not answer");
                return false;
            }
        }
        let pause = if leader.is_leader() {
            PING_EVERY
        } else {
            TRY_EVERY
        };
        let stopped = tokio::select! {
            () = tokio::time::sleep(pause) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopped {
            leader.resign();
            let _ = tokio::time::timeout(IO_TIMEOUT, conn.close()).await;
            return true;
        }
    }
}
