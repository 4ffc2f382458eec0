//! Items the node keeps as its own although a revision names them: an
//! operator marks a rule, function or driver local-only on the node
//! ([`LocalItems::local_only`](crate::LocalItems::local_only)), and every
//! apply and reconciliation works on the revision without those items.
//! The node's item stays as it runs; each revision that names it reports
//! it as `kept_local` (not a failure, so the revision still applies).
//!
//! The previous state is stripped the same way, so an item marked after
//! the cloud deployed it is never removed by a later revision that drops
//! it: it is the node's own from the moment it is marked.

use verge_protocol::{DesiredState, ItemOutcome, ItemResult};

use crate::parts::NodeParts;

/// The kinds an item may be kept local-only of.
pub const KINDS: [&str; 3] = ["rule", "function", "driver"];

/// Whether the node keeps its own `kind` `name`.
pub(crate) fn kept(parts: &NodeParts, kind: &str, name: &str) -> bool {
    parts
        .local
        .as_ref()
        .is_some_and(|l| l.local_only(kind, name))
}

/// `d` without the items the node keeps local-only; with `results`, one
/// `kept_local` result per item left out.
pub(crate) fn strip(
    parts: &NodeParts,
    d: &DesiredState,
    mut results: Option<&mut Vec<ItemResult>>,
) -> DesiredState {
    let mut out = d.clone();
    if parts.local.is_none() {
        return out;
    }
    let mut keep = |kind: &str, name: &str| {
        let kept = kept(parts, kind, name);
        if kept && let Some(r) = results.as_deref_mut() {
            r.push(ItemResult {
                kind: kind.to_owned(),
                name: name.to_owned(),
                result: ItemOutcome::KeptLocal,
                error: None,
            });
        }
        !kept
    };
    out.rules.retain(|r| r.id.is_empty() || keep("rule", &r.id));
    out.functions.retain(|f| keep("function", &f.name));
    out.drivers.retain(|x| keep("driver", &x.name));
    out
}
