//! TEMPORARY PLACEHOLDER so the crate compiles — helper-7 replaces this whole file.

use super::{Action, ActionError, BoxFuture, Output};
use crate::config::WebhookConfig;
use crate::error::RuleError;

/// Placeholder.
pub struct Webhook;

impl Webhook {
    /// Placeholder.
    pub fn new(_c: &WebhookConfig) -> Result<Webhook, RuleError> {
        Err(RuleError::action("webhook", "not built yet"))
    }
}

impl Action for Webhook {
    fn deliver<'a>(&'a self, _out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async { Err(ActionError::permanent("not built yet")) })
    }
}
