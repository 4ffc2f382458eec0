//! The environment the node gives a component, process or container: its
//! own `env` and the `VERGE_*` variables that tell it who and where it is.

use std::path::Path;

use verge_protocol::ComponentSpec;

/// `spec.env` followed by the node's `VERGE_COMPONENT_*` variables
/// (`workdir` as `VERGE_COMPONENT_DIR`); later entries win.
pub fn component_env(spec: &ComponentSpec, workdir: &Path) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config = match &spec.config {
        serde_json::Value::Null => "{}".to_owned(),
        v => v.to_string(),
    };
    vars.extend([
        ("VERGE_COMPONENT_NAME".to_owned(), spec.name.clone()),
        ("VERGE_COMPONENT_VERSION".to_owned(), spec.version.clone()),
        (
            "VERGE_COMPONENT_DIR".to_owned(),
            workdir.display().to_string(),
        ),
        ("VERGE_COMPONENT_CONFIG".to_owned(), config),
    ]);
    vars
}
