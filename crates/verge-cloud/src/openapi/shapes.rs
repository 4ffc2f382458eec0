//! Small builders of OpenAPI schema objects (integers, times, names,
//! references, arrays, closed objects) shared by the document and its
//! component schemas.

use serde_json::{Value, json};

/// Names and ids: 1–64 letters, digits, `-` or `_`.
const NAME: &str = "^[A-Za-z0-9_-]{1,64}$";

pub(super) fn name_schema() -> Value {
    json!({"type": "string", "pattern": NAME, "minLength": 1, "maxLength": 64})
}

pub(super) fn int() -> Value {
    json!({"type": "integer", "format": "int64"})
}

pub(super) fn ms() -> Value {
    json!({"type": "integer", "format": "int64", "description": "ms since the Unix epoch"})
}

pub(super) fn nullable_ms() -> Value {
    json!({"type": "integer", "format": "int64", "nullable": true})
}

pub(super) fn uint() -> Value {
    json!({"type": "integer", "format": "int64", "minimum": 0})
}

pub(super) fn string() -> Value {
    json!({"type": "string"})
}

pub(super) fn object() -> Value {
    json!({"type": "object"})
}

pub(super) fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

pub(super) fn nullable_ref(name: &str) -> Value {
    json!({"allOf": [r(name)], "nullable": true})
}

pub(super) fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// An object with exactly these `properties`, of which `required` must be
/// there; `closed` = no others (`deny_unknown_fields`, or an answer built
/// with exactly these keys).
pub(super) fn obj(required: &[&str], closed: bool, properties: Value) -> Value {
    let mut o = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    if closed {
        o["additionalProperties"] = json!(false);
    }
    o
}
