//! The environment the node gives a component, process or container: its
//! own `env` and the `VERGE_*` variables that tell it who and where it is.

use std::path::Path;

use verge_protocol::ComponentSpec;

use super::bus::Credentials;

/// `spec.env` followed by the node's `VERGE_COMPONENT_*` variables
/// (`workdir` as `VERGE_COMPONENT_DIR`) and, with `mqtt`, the
/// `VERGE_MQTT_*` ones (`VERGE_MQTT_URL` only when the node has an MQTT
/// listener); later entries win.
pub fn component_env(
    spec: &ComponentSpec,
    workdir: &Path,
    mqtt: Option<&Credentials>,
) -> Vec<(String, String)> {
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
    if let Some(c) = mqtt {
        if let Some(url) = &c.url {
            vars.push(("VERGE_MQTT_URL".to_owned(), url.clone()));
        }
        vars.extend([
            ("VERGE_MQTT_USERNAME".to_owned(), c.username.clone()),
            ("VERGE_MQTT_PASSWORD".to_owned(), c.password.clone()),
            ("VERGE_MQTT_CLIENT_ID".to_owned(), c.client_id.clone()),
        ]);
    }
    vars
}
