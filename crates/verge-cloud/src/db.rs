//! The database: one code path over `sqlx::AnyPool` for SQLite and
//! PostgreSQL, a small table-driven migration runner and shared helpers.
//!
//! Portable SQL only: `$n` placeholders (SQLite accepts them), `BIGINT`
//! times in ms, JSON as `TEXT`, flags as `BIGINT` 0/1. Where DDL differs
//! (auto-increment ids, blobs) a migration carries one string per dialect.

use sha2::{Digest, Sha256};
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, Executor, Transaction};

use crate::error::CloudError;

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// One schema migration: `(version, sqlite statements, postgres statements)`.
struct Migration {
    version: i64,
    sqlite: &'static [&'static str],
    postgres: &'static [&'static str],
}

const COMMON_V1: &[&str] = &[
    "CREATE TABLE tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE, created_ms BIGINT NOT NULL)",
    "CREATE TABLE nodes (id TEXT PRIMARY KEY, description TEXT NOT NULL, config TEXT NOT NULL, created_ms BIGINT NOT NULL, joined_ms BIGINT, last_seen_ms BIGINT, desired_version BIGINT NOT NULL, applied_version BIGINT NOT NULL, apply_errors TEXT NOT NULL, report TEXT, join_token_hash TEXT, join_expires_ms BIGINT, secret_sha256 TEXT, secret_phc TEXT)",
    "CREATE TABLE devices (id TEXT PRIMARY KEY, node_id TEXT NOT NULL, description TEXT NOT NULL, secret_phc TEXT NOT NULL, created_ms BIGINT NOT NULL, last_telemetry TEXT, last_telemetry_ms BIGINT)",
    "CREATE INDEX devices_node ON devices (node_id)",
    "CREATE TABLE rules (id TEXT PRIMARY KEY, node_id TEXT NOT NULL, sql TEXT NOT NULL, actions TEXT NOT NULL, enabled BIGINT NOT NULL, description TEXT NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)",
    "CREATE INDEX rules_node ON rules (node_id)",
    "CREATE TABLE rule_functions (rule_id TEXT NOT NULL, function_name TEXT NOT NULL, PRIMARY KEY (rule_id, function_name))",
    "CREATE INDEX rule_functions_name ON rule_functions (function_name)",
];

const SQLITE_V1: &[&str] = &[
    "CREATE TABLE functions (name TEXT PRIMARY KEY, version BIGINT NOT NULL, sha256 TEXT NOT NULL, size BIGINT NOT NULL, spec TEXT NOT NULL, module BLOB NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)",
    "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, verge_id TEXT, node_id TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, received_ms BIGINT NOT NULL, UNIQUE (node_id, verge_id))",
    "CREATE TABLE node_metrics (id INTEGER PRIMARY KEY AUTOINCREMENT, node_id TEXT NOT NULL, ts_ms BIGINT NOT NULL, cpu_percent DOUBLE PRECISION NOT NULL, memory_bytes BIGINT NOT NULL, connections BIGINT NOT NULL, messages_in_rate DOUBLE PRECISION NOT NULL, messages_out_rate DOUBLE PRECISION NOT NULL, backlog_messages BIGINT NOT NULL)",
];

const POSTGRES_V1: &[&str] = &[
    "CREATE TABLE functions (name TEXT PRIMARY KEY, version BIGINT NOT NULL, sha256 TEXT NOT NULL, size BIGINT NOT NULL, spec TEXT NOT NULL, module BYTEA NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL)",
    "CREATE TABLE messages (id BIGSERIAL PRIMARY KEY, verge_id TEXT, node_id TEXT NOT NULL, topic TEXT NOT NULL, payload BYTEA NOT NULL, received_ms BIGINT NOT NULL, UNIQUE (node_id, verge_id))",
    "CREATE TABLE node_metrics (id BIGSERIAL PRIMARY KEY, node_id TEXT NOT NULL, ts_ms BIGINT NOT NULL, cpu_percent DOUBLE PRECISION NOT NULL, memory_bytes BIGINT NOT NULL, connections BIGINT NOT NULL, messages_in_rate DOUBLE PRECISION NOT NULL, messages_out_rate DOUBLE PRECISION NOT NULL, backlog_messages BIGINT NOT NULL)",
];

const COMMON_V2: &[&str] = &[
    "CREATE INDEX messages_node ON messages (node_id, id)",
    "CREATE INDEX messages_received ON messages (received_ms)",
    "CREATE INDEX node_metrics_node ON node_metrics (node_id, ts_ms)",
];

/// API tokens get a scope: `admin` (everything) or `read` (GET only).
const COMMON_V3: &[&str] = &["ALTER TABLE tokens ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin'"];

/// Components: one row per version (its spec immutable once stored, its
/// artifact set once), and which version of which component each node runs.
const COMPONENTS_COMMON_V4: &[&str] = &[
    "CREATE TABLE node_components (node_id TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, assigned_ms BIGINT NOT NULL, PRIMARY KEY (node_id, name))",
    "CREATE INDEX node_components_name ON node_components (name, version)",
];

const SQLITE_V4: &[&str] = &[
    "CREATE TABLE component_versions (name TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL, spec TEXT NOT NULL, artifact_sha256 TEXT, artifact_size BIGINT, artifact BLOB, created_ms BIGINT NOT NULL, PRIMARY KEY (name, version))",
];

const POSTGRES_V4: &[&str] = &[
    "CREATE TABLE component_versions (name TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL, spec TEXT NOT NULL, artifact_sha256 TEXT, artifact_size BIGINT, artifact BYTEA, created_ms BIGINT NOT NULL, PRIMARY KEY (name, version))",
];

/// Revisions: every change of what a node should run is a numbered,
/// immutable snapshot of its desired state (without function modules),
/// with who made it, what changed and what the node made of it
/// (`crate::revisions`). Function modules are kept by content, so an
/// older revision can be served exactly; `revision_modules` says which
/// revision names which module (modules no revision and no function
/// names are pruned). Modules stored before this migration are copied.
const REVISIONS_COMMON_V5: &[&str] = &[
    "CREATE TABLE node_revisions (node_id TEXT NOT NULL, revision BIGINT NOT NULL, created_ms BIGINT NOT NULL, author TEXT NOT NULL, summary TEXT NOT NULL, state TEXT NOT NULL, result TEXT, result_json TEXT, PRIMARY KEY (node_id, revision))",
    "CREATE TABLE revision_modules (node_id TEXT NOT NULL, revision BIGINT NOT NULL, sha256 TEXT NOT NULL, PRIMARY KEY (node_id, revision, sha256))",
    "CREATE INDEX revision_modules_sha256 ON revision_modules (sha256)",
    "INSERT INTO function_modules (sha256, module) SELECT DISTINCT sha256, module FROM functions",
];

const SQLITE_V5: &[&str] =
    &["CREATE TABLE function_modules (sha256 TEXT PRIMARY KEY, module BLOB NOT NULL)"];

const POSTGRES_V5: &[&str] =
    &["CREATE TABLE function_modules (sha256 TEXT PRIMARY KEY, module BYTEA NOT NULL)"];

/// Node labels (a JSON object, `crate::api::labels`) and staged rollouts
/// (`crate::rollouts`): one row per rollout with its current stage, one
/// per node it targets (fixed at creation) with the revision it made and
/// what came of it.
const ROLLOUTS_COMMON_V7: &[&str] = &[
    "ALTER TABLE nodes ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'",
    "CREATE TABLE rollout_nodes (rollout_id BIGINT NOT NULL, node_id TEXT NOT NULL, stage BIGINT NOT NULL, revision BIGINT, result TEXT NOT NULL, error TEXT, PRIMARY KEY (rollout_id, node_id))",
];

const SQLITE_V7: &[&str] = &[
    "CREATE TABLE rollouts (id INTEGER PRIMARY KEY AUTOINCREMENT, component TEXT NOT NULL, version TEXT NOT NULL, selector TEXT NOT NULL, max_failure_rate DOUBLE PRECISION NOT NULL, stage_timeout_ms BIGINT NOT NULL, stages BIGINT NOT NULL, stage BIGINT NOT NULL, stage_started_ms BIGINT NOT NULL, state TEXT NOT NULL, reason TEXT, created_ms BIGINT NOT NULL, author TEXT NOT NULL)",
];

const POSTGRES_V7: &[&str] = &[
    "CREATE TABLE rollouts (id BIGSERIAL PRIMARY KEY, component TEXT NOT NULL, version TEXT NOT NULL, selector TEXT NOT NULL, max_failure_rate DOUBLE PRECISION NOT NULL, stage_timeout_ms BIGINT NOT NULL, stages BIGINT NOT NULL, stage BIGINT NOT NULL, stage_started_ms BIGINT NOT NULL, state TEXT NOT NULL, reason TEXT, created_ms BIGINT NOT NULL, author TEXT NOT NULL)",
];

/// Releases of the `verge` binary (self-update of nodes): one row per
/// version (digest and signature immutable, the binary set once), and the
/// release each node should run.
const RELEASES_COMMON_V6: &[&str] = &[
    "CREATE TABLE node_releases (node_id TEXT PRIMARY KEY, version TEXT NOT NULL, assigned_ms BIGINT NOT NULL)",
    "CREATE INDEX node_releases_version ON node_releases (version)",
];

const SQLITE_V6: &[&str] = &[
    "CREATE TABLE releases (version TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size BIGINT NOT NULL, signature TEXT NOT NULL, data BLOB, created_ms BIGINT NOT NULL)",
];

const POSTGRES_V6: &[&str] = &[
    "CREATE TABLE releases (version TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size BIGINT NOT NULL, signature TEXT NOT NULL, data BYTEA, created_ms BIGINT NOT NULL)",
];

/// Protocol drivers deployed to nodes (`crate::api::drivers`): one row per
/// driver of a node, its config (the driver's keys but `name`) as JSON
/// text, checked by the driver crate before it was stored. Deleted with
/// the node, as its component assignments are.
const DRIVERS_COMMON_V8: &[&str] = &[
    "CREATE TABLE node_drivers (node_id TEXT NOT NULL, name TEXT NOT NULL, config TEXT NOT NULL, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, PRIMARY KEY (node_id, name))",
];

/// Devices as first-class citizens (issue 20, `crate::devices`):
/// the cloud's copy of each device's shadow (`doc`, a
/// `verge_protocol::device::Shadow` as JSON; `pending` = 1 while the
/// node's last reported copy does not cover it; `sent_ms` = when it was
/// last sent down), commands with their state, alarms (at most one
/// `active` per device and type, kept by a partial unique index), the
/// `verge-id`s of upstream device-channel messages already handled (they
/// are not stored as messages, so they de-duplicate here), the device
/// sessions a node reports and its broker endpoints.
const DEVICES_COMMON_V9: &[&str] = &[
    "CREATE TABLE device_shadows (device_id TEXT PRIMARY KEY, doc TEXT NOT NULL, version BIGINT NOT NULL, pending BIGINT NOT NULL, updated_ms BIGINT NOT NULL, sent_ms BIGINT NOT NULL)",
    "CREATE INDEX device_shadows_pending ON device_shadows (pending, sent_ms)",
    "CREATE TABLE commands (id TEXT PRIMARY KEY, device_id TEXT NOT NULL, node_id TEXT NOT NULL, name TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL, created_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, attempts BIGINT NOT NULL, last_sent_ms BIGINT, reply TEXT, error TEXT)",
    "CREATE INDEX commands_device ON commands (device_id, created_ms)",
    "CREATE INDEX commands_status ON commands (status, expires_ms)",
    "CREATE TABLE alarms (id TEXT PRIMARY KEY, device_id TEXT NOT NULL, node_id TEXT NOT NULL, alarm_type TEXT NOT NULL, severity TEXT NOT NULL, message TEXT NOT NULL, status TEXT NOT NULL, acknowledged BIGINT NOT NULL, raise_count BIGINT NOT NULL, rule TEXT NOT NULL, details TEXT, created_ms BIGINT NOT NULL, updated_ms BIGINT NOT NULL, cleared_ms BIGINT, acknowledged_ms BIGINT)",
    "CREATE UNIQUE INDEX alarms_open ON alarms (device_id, alarm_type) WHERE status = 'active'",
    "CREATE INDEX alarms_device ON alarms (device_id, created_ms)",
    "CREATE INDEX alarms_created ON alarms (created_ms)",
    "CREATE TABLE device_channel_ids (node_id TEXT NOT NULL, verge_id TEXT NOT NULL, received_ms BIGINT NOT NULL, PRIMARY KEY (node_id, verge_id))",
    "CREATE INDEX device_channel_ids_received ON device_channel_ids (received_ms)",
    "ALTER TABLE devices ADD COLUMN connected BIGINT",
    "ALTER TABLE devices ADD COLUMN since_ms BIGINT",
    "ALTER TABLE devices ADD COLUMN client_id TEXT",
    "ALTER TABLE devices ADD COLUMN transport TEXT",
    "ALTER TABLE nodes ADD COLUMN endpoints TEXT NOT NULL DEFAULT '[]'",
];

/// Cloud replicas (`crate::replicas`): one row per `verge cloud` process
/// on the database, refreshed every 2 s (`leader` = 1 while it leads).
const REPLICAS_COMMON_V10: &[&str] = &[
    "CREATE TABLE cloud_replicas (id TEXT PRIMARY KEY, http_url TEXT NOT NULL, version TEXT NOT NULL, started_ms BIGINT NOT NULL, seen_ms BIGINT NOT NULL, leader BIGINT NOT NULL)",
];

/// PostgreSQL: a change of a node's desired version (or its deletion)
/// notifies channel `verge_desired` with the node id at commit, whichever
/// statement made it, so every replica wakes that node's long polls
/// (`crate::replicas::wake`). SQLite has one process: it wakes them in
/// process.
const POSTGRES_V10: &[&str] = &[
    "CREATE OR REPLACE FUNCTION verge_desired_notify() RETURNS trigger AS $$ \
     BEGIN \
       IF TG_OP = 'DELETE' THEN \
         PERFORM pg_notify('verge_desired', OLD.id); \
         RETURN OLD; \
       END IF; \
       IF NEW.desired_version IS DISTINCT FROM OLD.desired_version THEN \
         PERFORM pg_notify('verge_desired', NEW.id); \
       END IF; \
       RETURN NEW; \
     END $$ LANGUAGE plpgsql",
    "CREATE TRIGGER nodes_desired_notify AFTER UPDATE OF desired_version OR DELETE ON nodes \
     FOR EACH ROW EXECUTE PROCEDURE verge_desired_notify()",
];

/// External broker mode: each replica's consumer session on the broker,
/// refreshed while the replica lives, claimed and ended by another
/// replica once it is not (`crate::external::adopt`).
const MQTT_SESSIONS_COMMON_V11: &[&str] = &[
    "CREATE TABLE mqtt_consumer_sessions (client_id TEXT PRIMARY KEY, replica TEXT NOT NULL, seen_ms BIGINT NOT NULL, adopted_by TEXT, adopted_ms BIGINT, done_ms BIGINT)",
];

/// Telemetry at scale (issue 21, `crate::telemetry`): every upstream
/// message keeps the time it was queued on the node (`queued_ms`, the
/// `verge-time` user property, else the time it was received). On
/// PostgreSQL `messages` becomes a table range-partitioned by that time:
/// a new partitioned table gets the rows (all in its DEFAULT partition
/// first; the maintenance pass at start moves them into daily
/// partitions), keeps the id sequence (ids stay increasing: the API pages
/// by them) and takes the old table's name. Its unique keys include the
/// partition key, as PostgreSQL requires: a resend repeats `verge-time`,
/// so (node, `verge-id`, `queued_ms`) still finds the duplicate. SQLite
/// keeps the plain table with the new column (NULL for older rows).
const SQLITE_V12: &[&str] = &["ALTER TABLE messages ADD COLUMN queued_ms BIGINT"];

const POSTGRES_V12: &[&str] = &[
    "ALTER SEQUENCE messages_id_seq OWNED BY NONE",
    "CREATE TABLE messages_partitioned (id BIGINT NOT NULL DEFAULT nextval('messages_id_seq'), verge_id TEXT, node_id TEXT NOT NULL, topic TEXT NOT NULL, payload BYTEA NOT NULL, received_ms BIGINT NOT NULL, queued_ms BIGINT NOT NULL) PARTITION BY RANGE (queued_ms)",
    "CREATE TABLE messages_default PARTITION OF messages_partitioned DEFAULT",
    "INSERT INTO messages_partitioned (id, verge_id, node_id, topic, payload, received_ms, queued_ms) \
     SELECT id, verge_id, node_id, topic, payload, received_ms, received_ms FROM messages",
    "DROP TABLE messages",
    "ALTER TABLE messages_partitioned RENAME TO messages",
    "ALTER SEQUENCE messages_id_seq OWNED BY messages.id",
    "ALTER TABLE messages ADD PRIMARY KEY (id, queued_ms)",
    "CREATE UNIQUE INDEX messages_dedup ON messages (node_id, verge_id, queued_ms)",
    "CREATE INDEX messages_node ON messages (node_id, id)",
    "CREATE INDEX messages_default_queued ON messages_default (queued_ms)",
];

/// Duplicate replica ids (`crate::replicas::check_unique`): each start of
/// a replica writes a random instance nonce into its row, so a second
/// live process given the same `cloud.replica_id` is told apart from a
/// restart of the same replica. Rows written before have `''`.
const REPLICAS_COMMON_V13: &[&str] =
    &["ALTER TABLE cloud_replicas ADD COLUMN instance TEXT NOT NULL DEFAULT ''"];

/// Every migration, oldest first. Append only.
fn migrations() -> Vec<Migration> {
    let join = |a: &'static [&'static str],
                b: &'static [&'static str]|
     -> &'static [&'static str] { Box::leak([a, b].concat().into_boxed_slice()) };
    vec![
        Migration {
            version: 1,
            sqlite: join(COMMON_V1, SQLITE_V1),
            postgres: join(COMMON_V1, POSTGRES_V1),
        },
        Migration {
            version: 2,
            sqlite: COMMON_V2,
            postgres: COMMON_V2,
        },
        Migration {
            version: 3,
            sqlite: COMMON_V3,
            postgres: COMMON_V3,
        },
        Migration {
            version: 4,
            sqlite: join(SQLITE_V4, COMPONENTS_COMMON_V4),
            postgres: join(POSTGRES_V4, COMPONENTS_COMMON_V4),
        },
        Migration {
            version: 5,
            sqlite: join(SQLITE_V5, REVISIONS_COMMON_V5),
            postgres: join(POSTGRES_V5, REVISIONS_COMMON_V5),
        },
        Migration {
            version: 6,
            sqlite: join(SQLITE_V6, RELEASES_COMMON_V6),
            postgres: join(POSTGRES_V6, RELEASES_COMMON_V6),
        },
        Migration {
            version: 7,
            sqlite: join(SQLITE_V7, ROLLOUTS_COMMON_V7),
            postgres: join(POSTGRES_V7, ROLLOUTS_COMMON_V7),
        },
        Migration {
            version: 8,
            sqlite: DRIVERS_COMMON_V8,
            postgres: DRIVERS_COMMON_V8,
        },
        Migration {
            version: 9,
            sqlite: DEVICES_COMMON_V9,
            postgres: DEVICES_COMMON_V9,
        },
        Migration {
            version: 10,
            sqlite: REPLICAS_COMMON_V10,
            postgres: join(REPLICAS_COMMON_V10, POSTGRES_V10),
        },
        Migration {
            version: 11,
            sqlite: MQTT_SESSIONS_COMMON_V11,
            postgres: MQTT_SESSIONS_COMMON_V11,
        },
        Migration {
            version: 12,
            sqlite: SQLITE_V12,
            postgres: POSTGRES_V12,
        },
        Migration {
            version: 13,
            sqlite: REPLICAS_COMMON_V13,
            postgres: REPLICAS_COMMON_V13,
        },
    ]
}

/// Create the SQLite file `path` empty with mode 0600 unless it exists, so
/// that the database (password hashes, telemetry) is never readable by
/// others, whatever the umask; SQLite gives its `-wal` and `-shm` files
/// the same mode.
pub fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(verge_net::fs::PRIVATE_FILE)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Make the SQLite file `path` and its `-wal` and `-shm` files private
/// (0600): a database an older version made readable is fixed at start.
pub fn make_private(path: &std::path::Path) -> std::io::Result<()> {
    verge_net::fs::make_private(path)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        match verge_net::fs::make_private(std::path::Path::new(&side)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Whether `url` names a PostgreSQL database.
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres:") || url.starts_with("postgresql:")
}

/// Connect to `url` and bring the schema up to date.
/// `connections` is the PostgreSQL pool's size (`cloud.database_connections`);
/// SQLite always gets one.
pub async fn open(url: &str, connections: u32) -> Result<AnyPool, CloudError> {
    sqlx::any::install_default_drivers();
    let dialect = if is_postgres(url) {
        Dialect::Postgres
    } else if url.starts_with("sqlite:") {
        Dialect::Sqlite
    } else {
        return Err(CloudError::Other(format!(
            "cloud.database: `{url}` is neither `postgres://…` nor `sqlite://…`"
        )));
    };
    // SQLite has one writer: a deferred transaction that reads and then
    // writes fails at once with "database is locked" when another
    // connection wrote in between (busy_timeout does not help there), so
    // every statement goes through one connection.
    let pool = AnyPoolOptions::new()
        .max_connections(if dialect == Dialect::Sqlite {
            1
        } else {
            connections
        })
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if dialect == Dialect::Sqlite {
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    migrate(&pool, dialect).await?;
    Ok(pool)
}

/// The advisory lock key migrations take on PostgreSQL.
const MIGRATION_LOCK: i64 = 0x7665_7267_6530;

async fn migrate(pool: &AnyPool, dialect: Dialect) -> Result<(), CloudError> {
    migrate_upto(pool, dialect, i64::MAX).await
}

/// Apply the migrations up to version `upto` (tests start from an older
/// schema this way).
pub(crate) async fn migrate_upto(
    pool: &AnyPool,
    dialect: Dialect,
    upto: i64,
) -> Result<(), CloudError> {
    pool.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
        .await?;
    for m in migrations().into_iter().filter(|m| m.version <= upto) {
        let mut tx = pool.begin().await?;
        if dialect == Dialect::Postgres {
            // Replicas starting together migrate one at a time.
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(MIGRATION_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let done: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(m.version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_some() {
            continue;
        }
        let statements = match dialect {
            Dialect::Sqlite => m.sqlite,
            Dialect::Postgres => m.postgres,
        };
        for s in statements {
            tx.execute(*s).await?;
        }
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(m.version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, "database migrated");
    }
    Ok(())
}

/// Bump the desired version of each node in `nodes` and record the new
/// revision of each, built from the tables, with `reason` (in the
/// caller's transaction, so the change, the bump and the revision commit
/// together).
pub async fn bump_nodes(
    tx: &mut Transaction<'_, Any>,
    nodes: &[String],
    reason: &crate::revisions::Reason,
) -> Result<(), crate::error::AppError> {
    for n in nodes {
        let done =
            sqlx::query("UPDATE nodes SET desired_version = desired_version + 1 WHERE id = $1")
                .bind(n)
                .execute(&mut **tx)
                .await?;
        if done.rows_affected() == 1 {
            crate::revisions::record(tx, n, reason).await?;
        }
    }
    Ok(())
}

/// Lock node `node`'s row for the rest of `tx` (PostgreSQL; SQLite has
/// one writer anyway), so changes to what it runs queue up; 404 when there
/// is no such node.
pub async fn lock_node(
    tx: &mut Transaction<'_, Any>,
    node: &str,
) -> Result<(), crate::error::AppError> {
    let done = sqlx::query("UPDATE nodes SET desired_version = desired_version WHERE id = $1")
        .bind(node)
        .execute(&mut **tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(crate::error::AppError::not_found(format!(
            "no node `{node}`"
        )));
    }
    Ok(())
}

/// Nodes whose rules name the function `name`.
pub async fn nodes_using_function(
    tx: &mut Transaction<'_, Any>,
    name: &str,
) -> sqlx::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT r.node_id FROM rules r JOIN rule_functions f ON f.rule_id = r.id \
         WHERE f.function_name = $1 ORDER BY r.node_id",
    )
    .bind(name)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Milliseconds since the Unix epoch (re-exported for the API modules).
pub(crate) use verge_net::now_ms;

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// 32 random bytes as lower-case hex (tokens and secrets).
pub fn random_secret() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The argon2id PHC string of a node secret made by `random_secret` (32
/// random bytes, 256 bits), at argon2's minimal cost (8 KiB, one pass).
///
/// A slow, memory-hard hash protects guessable, user-chosen passwords from
/// offline guessing; a 256-bit random secret cannot be guessed whatever the
/// hash costs, so the default cost (19 MiB, two passes, tens of
/// milliseconds of CPU) would only bound joins and MQTT connects (one hash
/// per join, one verification per connect) and take memory. The PHC string
/// carries its parameters, so secrets hashed before at the default cost
/// still verify. User-chosen secrets, passwords and tokens are not hashed
/// here.
pub fn hash_node_secret(secret: &str) -> Result<String, String> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::{Algorithm, Argon2, Params, Version};
    use rand_core::RngCore;
    let mut salt = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| format!("salt: {e}"))?;
    let params = Params::new(Params::MIN_M_COST, Params::MIN_T_COST, 1, None)
        .map_err(|e| format!("argon2 parameters: {e}"))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing a node secret: {e}"))
}

/// 16 random bytes as lower-case hex: the id of a command or an alarm
/// (URL-safe, and a valid MQTT topic level).
pub fn random_id() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// `s` without NUL characters: PostgreSQL refuses them in `TEXT` (the
/// statement, and so its transaction, would fail), so free text from a
/// node or device loses them before it is stored.
pub fn clean_text(s: &str) -> String {
    s.replace('\0', "")
}

/// Parse a JSON text column, `null` when it is not JSON.
pub fn json_col(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new node secret's hash is argon2id at the minimal cost, and the
    /// broker's check (`Argon2::default()`, which takes the parameters from
    /// the PHC string) accepts it and a default-cost hash made before,
    /// and refuses a wrong secret.
    #[test]
    fn node_secrets_hash_cheaply_and_old_hashes_still_verify() {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let secret = random_secret();
        assert_eq!(secret.len(), 64, "32 random bytes as hex");
        let phc = hash_node_secret(&secret).expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{phc}");
        let check = |phc: &str, s: &str| {
            argon2::Argon2::default()
                .verify_password(s.as_bytes(), &PasswordHash::new(phc).expect("phc"))
                .is_ok()
        };
        assert!(check(&phc, &secret));
        assert!(!check(&phc, &random_secret()));
        assert_ne!(phc, hash_node_secret(&secret).expect("hash"), "salted");
        let old = verge_broker::auth::hash_password(&secret).expect("default cost");
        assert!(old.contains("m=19456,t=2"), "{old}");
        assert!(check(&old, &secret));
    }

    /// Migration 12 on PostgreSQL turns an existing `messages` table into
    /// the partitioned one: rows, ids and the id sequence are kept, the
    /// queue time is the receive time, and the API's reads still work.
    /// Needs `VERGE_TEST_POSTGRES_URL` (skipped, saying so, without it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migration_12_partitions_an_existing_messages_table_keeping_rows() {
        let Some(db) = crate::testing::ScratchDb::from_env("verge_mig12").await else {
            return;
        };
        let url = db.url().to_owned();
        let pool = AnyPool::connect(&url).await.expect("connect");
        migrate_upto(&pool, Dialect::Postgres, 9)
            .await
            .expect("schema 9");
        let now = now_ms();
        for (i, v) in [Some("q/l/1"), None, Some("q/l/2")].into_iter().enumerate() {
            sqlx::query(
                "INSERT INTO messages (verge_id, node_id, topic, payload, received_ms) VALUES ($1, 'e', $2, $3, $4)",
            )
            .bind(v)
            .bind(format!("t/{i}"))
            .bind(vec![i as u8])
            .bind(now - i as i64)
            .execute(&pool)
            .await
            .expect("old row");
        }
        let before: Vec<(i64, String)> =
            sqlx::query_as("SELECT id, topic FROM messages ORDER BY id")
                .fetch_all(&pool)
                .await
                .expect("rows");
        migrate(&pool, Dialect::Postgres).await.expect("migrate");
        let after: Vec<(i64, String, i64, i64)> =
            sqlx::query_as("SELECT id, topic, received_ms, queued_ms FROM messages ORDER BY id")
                .fetch_all(&pool)
                .await
                .expect("rows");
        assert_eq!(after.len(), 3);
        for ((id, topic), (id2, topic2, received, queued)) in before.iter().zip(&after) {
            assert_eq!((id, topic), (id2, topic2));
            assert_eq!(received, queued);
        }
        let (kind,): (String,) =
            sqlx::query_as("SELECT relkind::text FROM pg_class WHERE relname = 'messages'")
                .fetch_one(&pool)
                .await
                .expect("relkind");
        assert_eq!(kind, "p", "partitioned");
        // The sequence goes on after the old ids.
        let (next,): (i64,) = sqlx::query_as(
            "INSERT INTO messages (node_id, topic, payload, received_ms, queued_ms) \
             VALUES ('e', 'n', $1, $2, $2) RETURNING id",
        )
        .bind(vec![0u8])
        .bind(now)
        .fetch_one(&pool)
        .await
        .expect("insert");
        assert!(next > before.last().map_or(0, |r| r.0), "{next}");
        // The maintenance pass moves the rows into their day's partition.
        let pg = crate::telemetry::open_postgres(&url).await.expect("pg");
        let done = crate::telemetry::maintain(&pg, now, 24 * 3600 * 1000)
            .await
            .expect("maintain");
        assert_eq!(done.moved, 4, "{done:?}");
        let (in_default,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages_default")
            .fetch_one(&pool)
            .await
            .expect("count");
        assert_eq!(in_default, 0);
        pg.close().await;
        pool.close().await;
        db.drop_now().await.expect("drop database");
    }
}
