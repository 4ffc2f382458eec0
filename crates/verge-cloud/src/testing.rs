//! Scratch PostgreSQL databases for tests and `verge bench`: one made per
//! test (or run) on the server of a given URL, dropped afterwards. Not
//! part of the cloud's API (hidden from its docs).

use crate::error::CloudError;

/// The variable naming the PostgreSQL server the tests run on.
pub const POSTGRES_ENV: &str = "VERGE_TEST_POSTGRES_URL";

/// A database of its own on a PostgreSQL server, dropped (with `FORCE`,
/// closing what is still connected) by [`ScratchDb::drop_now`] or, failing
/// that, when this is dropped.
pub struct ScratchDb {
    /// The URL of the server's database it was made from (to drop it).
    base: String,
    /// Its name.
    name: String,
    /// Its URL.
    url: String,
    /// Set once dropped by `drop_now`.
    dropped: bool,
}

impl ScratchDb {
    /// Make database `{prefix}_{unique}` on the server of `base` (a
    /// `postgres://` URL whose user may create databases).
    pub async fn create(base: &str, prefix: &str) -> Result<ScratchDb, CloudError> {
        sqlx::any::install_default_drivers();
        let (without_query, query) = match base.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (base, None),
        };
        let (server, _) = without_query.rsplit_once('/').ok_or_else(|| {
            CloudError::Other(format!("`{base}` is not a URL with a database name"))
        })?;
        let name = format!("{prefix}_{}", unique());
        let url = match query {
            Some(q) => format!("{server}/{name}?{q}"),
            None => format!("{server}/{name}"),
        };
        let pool = quiet_pool(base).await?;
        let made = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&pool)
            .await;
        pool.close().await;
        made?;
        Ok(ScratchDb {
            base: base.to_owned(),
            name,
            url,
            dropped: false,
        })
    }

    /// A scratch database on the server of [`POSTGRES_ENV`], or `None`
    /// (saying so on stderr) when it is not set. Panics when the database
    /// cannot be made: for tests.
    pub async fn from_env(prefix: &str) -> Option<ScratchDb> {
        let Ok(base) = std::env::var(POSTGRES_ENV) else {
            eprintln!(
                "skipped: set {POSTGRES_ENV}=postgres://user:pass@host/db to run on PostgreSQL"
            );
            return None;
        };
        match ScratchDb::create(&base, prefix).await {
            Ok(db) => Some(db),
            Err(e) => panic!("a scratch database on {POSTGRES_ENV}: {e}"),
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drop the database now.
    pub async fn drop_now(mut self) -> Result<(), CloudError> {
        self.dropped = true;
        drop_database(&self.base, &self.name).await?;
        Ok(())
    }
}

/// A pool on `base` whose statements are not logged (a `DROP DATABASE`
/// that waits for connections to close would be logged as slow).
async fn quiet_pool(base: &str) -> Result<sqlx::AnyPool, sqlx::Error> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let options = sqlx::any::AnyConnectOptions::from_str(base)?.disable_statement_logging();
    sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
}

async fn drop_database(base: &str, name: &str) -> Result<(), sqlx::Error> {
    let pool = quiet_pool(base).await?;
    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
    let r = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
    pool.close().await;
    r.map(|_| ())
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop may run inside a runtime: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(drop_database(&base, &name)).ok()
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("could not drop the scratch database {}", self.name);
        }
    }
}

/// Unique within the server for a while: the process id, the clock's
/// nanoseconds and a counter.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}_{}_{}",
        std::process::id(),
        t % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch database exists once made and is gone once dropped,
    /// whichever way. Needs `VERGE_TEST_POSTGRES_URL`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scratch_database_is_made_and_dropped() {
        let Ok(base) = std::env::var(POSTGRES_ENV) else {
            eprintln!("skipped: set {POSTGRES_ENV} to run on PostgreSQL");
            return;
        };
        let exists = |name: String| {
            let base = base.clone();
            async move {
                let pool = sqlx::AnyPool::connect(&base).await.expect("connect");
                let (n,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
                        .bind(name)
                        .fetch_one(&pool)
                        .await
                        .expect("count");
                pool.close().await;
                n == 1
            }
        };
        let a = ScratchDb::create(&base, "verge_scratch").await.expect("a");
        let b = ScratchDb::create(&base, "verge_scratch").await.expect("b");
        assert_ne!(a.name(), b.name());
        assert!(a.url().contains(a.name()));
        let pool = sqlx::AnyPool::connect(a.url()).await.expect("connect");
        let (one,): (i32,) = sqlx::query_as("SELECT 1")
            .fetch_one(&pool)
            .await
            .expect("q");
        assert_eq!(one, 1);
        // Still connected: FORCE closes it.
        let (a_name, b_name) = (a.name().to_owned(), b.name().to_owned());
        assert!(exists(a_name.clone()).await);
        a.drop_now().await.expect("drop");
        assert!(!exists(a_name).await);
        drop(b);
        assert!(!exists(b_name).await);
    }
}
