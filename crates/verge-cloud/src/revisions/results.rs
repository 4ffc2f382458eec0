//! What nodes made of their revisions: the attempts their status reports
//! carry, stored with the revision tried, the result each revision shows,
//! and a node's deployment state.

use sqlx::{Any, Transaction};
use verge_protocol::{ApplyAttempt, AttemptState};

use crate::error::AppError;

/// The word stored in `node_revisions.result` for an attempt.
fn result_word(state: AttemptState) -> &'static str {
    match state {
        AttemptState::Applying => "applying",
        AttemptState::Applied => "applied",
        AttemptState::RolledBack => "rolled_back",
    }
}

/// Store what a status report says about the node's revisions: the
/// attempt's outcome on the revision it tried; the applied revision as
/// `applied` (nodes that report no attempt); every older revision the node
/// never tried as `superseded`. The same report twice changes nothing.
pub async fn record_report(
    tx: &mut Transaction<'_, Any>,
    node: &str,
    applied: i64,
    attempt: Option<&ApplyAttempt>,
) -> Result<(), AppError> {
    let mut tried = applied;
    if let Some(a) = attempt {
        let text = serde_json::to_string(a).map_err(AppError::internal)?;
        sqlx::query(
            "UPDATE node_revisions SET result = $1, result_json = $2 WHERE node_id = $3 AND revision = $4",
        )
        .bind(result_word(a.state))
        .bind(text)
        .bind(node)
        .bind(a.version)
        .execute(&mut **tx)
        .await?;
        tried = tried.max(a.version);
    }
    sqlx::query(
        "UPDATE node_revisions SET result = 'applied' WHERE node_id = $1 AND revision = $2 AND result IS NULL",
    )
    .bind(node)
    .bind(applied)
    .execute(&mut **tx)
    .await?;
    // Never past the desired revision, whatever the report says.
    let desired: Option<(i64,)> = sqlx::query_as("SELECT desired_version FROM nodes WHERE id = $1")
        .bind(node)
        .fetch_optional(&mut **tx)
        .await?;
    let tried = desired.map_or(tried, |(d,)| tried.min(d));
    sqlx::query(
        "UPDATE node_revisions SET result = 'superseded' WHERE node_id = $1 AND revision < $2 AND result IS NULL",
    )
    .bind(node)
    .bind(tried)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The result of a revision for the API: what the node reported, else
/// `superseded` when a newer revision is desired, else `pending`.
pub fn result_of(stored: Option<&str>, revision: i64, desired: i64) -> &str {
    match stored {
        Some(r) => r,
        None if revision < desired => "superseded",
        None => "pending",
    }
}

/// A node's `deployment`: `in_sync` (it runs its desired revision),
/// `applying` or `failed` (what it reported about its desired revision;
/// `error` says why it failed), else `offline` when the node is, else
/// `pending` (it has not reported trying it yet).
pub fn deployment(
    desired: i64,
    applied: i64,
    attempt: Option<&ApplyAttempt>,
    status: &str,
) -> serde_json::Value {
    let tried = attempt.filter(|a| a.version == desired);
    let (state, error) = if applied == desired {
        ("in_sync", None)
    } else if let Some(a) = tried {
        match a.state {
            AttemptState::RolledBack => ("failed", Some(failure(a))),
            AttemptState::Applying | AttemptState::Applied => ("applying", None),
        }
    } else if status == "offline" {
        ("offline", None)
    } else {
        ("pending", None)
    };
    serde_json::json!({"state": state, "revision": desired, "applied_revision": applied, "error": error})
}

/// Why an attempt failed, in one line: its own error, else its failed
/// items.
pub fn failure(a: &ApplyAttempt) -> String {
    let items: Vec<String> = a
        .items
        .iter()
        .filter(|i| i.result == verge_protocol::ItemOutcome::Failed)
        .map(|i| {
            format!(
                "{} `{}`: {}",
                i.kind,
                i.name,
                i.error.as_deref().unwrap_or("failed")
            )
        })
        .collect();
    match (&a.error, items.is_empty()) {
        (Some(e), true) => e.clone(),
        (Some(e), false) => format!("{e}; {}", items.join("; ")),
        (None, false) => items.join("; "),
        (None, true) => "the revision was rolled back".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_protocol::{ItemOutcome, ItemResult};

    fn attempt(version: i64, state: AttemptState) -> ApplyAttempt {
        ApplyAttempt {
            version,
            state,
            ..ApplyAttempt::default()
        }
    }

    #[test]
    fn deployment_states() {
        assert_eq!(deployment(3, 3, None, "online")["state"], "in_sync");
        assert_eq!(deployment(4, 3, None, "online")["state"], "pending");
        assert_eq!(deployment(4, 3, None, "offline")["state"], "offline");
        // An attempt of an older revision says nothing about the desired one.
        let old = attempt(3, AttemptState::RolledBack);
        assert_eq!(deployment(4, 2, Some(&old), "online")["state"], "pending");
        let a = attempt(4, AttemptState::Applying);
        assert_eq!(deployment(4, 3, Some(&a), "online")["state"], "applying");
        let mut f = attempt(4, AttemptState::RolledBack);
        f.items.push(ItemResult {
            kind: "rule".into(),
            name: "hot".into(),
            result: ItemOutcome::Failed,
            error: Some("bad sql".into()),
        });
        let d = deployment(4, 3, Some(&f), "offline");
        assert_eq!(d["state"], "failed");
        assert_eq!(d["error"], "rule `hot`: bad sql");
    }

    #[test]
    fn results_without_a_report() {
        assert_eq!(result_of(None, 4, 4), "pending");
        assert_eq!(result_of(None, 3, 4), "superseded");
        assert_eq!(result_of(Some("rolled_back"), 3, 4), "rolled_back");
    }
}
