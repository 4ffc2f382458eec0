//! The component schemas of a node's revisions: the history entries, one
//! revision with its state and the node's attempt, the diff between two,
//! the rollback body, and the deployment state and attempt a node shows.

use serde_json::{Value, json};

use super::shapes::{array, int, ms, nullable_ref, obj, r, string, uint};

/// The schema of a revision number in a path (`{n}`, `{a}`, `{b}`).
pub(super) fn revision_number() -> Value {
    json!({"type": "integer", "format": "int64", "minimum": 1})
}

fn result() -> Value {
    json!({"type": "string",
           "enum": ["pending", "applying", "applied", "rolled_back", "superseded"],
           "description": "what the node made of the revision; superseded: a newer one was desired before the node tried it"})
}

/// `{added, removed, changed}` of one kind.
fn kind(changed: Value) -> Value {
    obj(
        &["added", "removed", "changed"],
        true,
        json!({"added": array(string()), "removed": array(string()), "changed": array(changed)}),
    )
}

pub(super) fn schemas() -> Vec<(&'static str, Value)> {
    let entry = json!({"revision": int(), "created_ms": ms(),
        "author": {"type": "string", "description": "the API token's name (its id when it has none), or `system`"},
        "summary": string(), "result": result()});
    let mut detail = entry.clone();
    detail["state"] = r("DesiredState");
    detail["attempt"] = nullable_ref("ApplyAttempt");
    let both = obj(
        &["name", "from", "to"],
        true,
        json!({"name": string(), "from": {"description": "the item in the first revision"},
               "to": {"description": "the item in the second revision"}}),
    );
    let device = obj(
        &["name", "change"],
        true,
        json!({"name": string(), "change": {"type": "string", "enum": ["secret changed"]}}),
    );
    vec![
        (
            "ApplyAttempt",
            obj(
                &[],
                false,
                json!({
                    "version": int(),
                    "state": {"type": "string", "enum": ["applying", "applied", "rolled_back"]},
                    "started_ms": uint(),
                    "finished_ms": {"type": "integer", "format": "int64", "minimum": 0, "nullable": true},
                    "items": array(obj(&[], false, json!({
                        "kind": string(), "name": string(),
                        "result": {"type": "string", "enum": ["applied", "removed", "failed", "kept_local"]},
                        "error": {"type": "string", "nullable": true}}))),
                    "error": {"type": "string", "nullable": true},
                    "rolled_back_to": {"type": "integer", "format": "int64", "nullable": true},
                }),
            ),
        ),
        (
            "NodeDeployment",
            obj(
                &["state", "revision", "applied_revision", "error"],
                true,
                json!({
                    "state": {"type": "string", "enum": ["in_sync", "pending", "applying", "failed", "offline"]},
                    "revision": int(), "applied_revision": int(),
                    "error": {"type": "string", "nullable": true, "description": "why the desired revision failed"},
                }),
            ),
        ),
        (
            "Revision",
            obj(
                &["revision", "created_ms", "author", "summary", "result"],
                true,
                entry,
            ),
        ),
        (
            "RevisionDetail",
            obj(
                &[
                    "revision",
                    "created_ms",
                    "author",
                    "summary",
                    "result",
                    "state",
                    "attempt",
                ],
                true,
                detail,
            ),
        ),
        (
            "RevisionDiff",
            obj(
                &[
                    "from",
                    "to",
                    "devices",
                    "rules",
                    "functions",
                    "drivers",
                    "components",
                    "config",
                    "release",
                ],
                true,
                json!({"from": int(), "to": int(), "devices": kind(device),
                       "rules": kind(both.clone()), "functions": kind(both.clone()),
                       "drivers": kind(both.clone()),
                       "components": kind(both.clone()),
                       "config": kind(both.clone()),
                       "release": kind(both)}),
            ),
        ),
        (
            "Rollback",
            obj(
                &["revision"],
                true,
                json!({"revision": {"type": "integer", "format": "int64", "minimum": 1}}),
            ),
        ),
    ]
}
