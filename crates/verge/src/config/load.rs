//! Layered config loading: defaults → embedded overlay → file → environment
//! (`VERGE__SECTION__KEY`) → command-line flags → typed [`NodeConfig`].
//!
//! Every layer is merged as a `toml::Value` tree over the serialized
//! defaults, so a partial section (say, only `bind` of a listener) keeps the
//! defaults of its other keys, and only then deserialized with
//! `serde_path_to_error`, so every error names the full key path and, when
//! an override set it, where the value came from.

use std::path::Path;

use anyhow::{Context, bail};
use toml::{Table, Value};

use verge_node::config::ConfigError;

use super::NodeConfig;

/// Prefix of the environment variables that override config keys.
pub const ENV_PREFIX: &str = "VERGE__";

/// The sources of one configuration, lowest precedence first.
#[derive(Debug, Default, Clone)]
pub struct Layers<'a> {
    /// Embedded TOML applied over the defaults (the demo overlay).
    pub base: Option<&'a str>,
    /// The config file, if any.
    pub file: Option<&'a Path>,
    /// Environment variables as (name, value); only `VERGE__*` are used.
    pub env: Vec<(String, String)>,
    /// Command-line overrides as (dotted key, value, flag name).
    pub flags: Vec<(String, String, &'static str)>,
}

/// The `VERGE__*` variables of this process.
pub fn process_env() -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let value = value.into_string().map_err(|_| {
            anyhow::anyhow!("environment variable {name}: value is not valid UTF-8")
        })?;
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

/// Load and validate a node configuration from its layers.
pub fn load(layers: &Layers<'_>) -> anyhow::Result<NodeConfig> {
    let (cfg, sources) = load_as::<NodeConfig>(layers)?;
    validate(&cfg, &sources)?;
    Ok(cfg)
}

/// Merge the layers over `T`'s defaults and deserialize; also returns where
/// each overridden key came from, for error messages.
pub fn load_as<T>(layers: &Layers<'_>) -> anyhow::Result<(T, Vec<(String, String)>)>
where
    T: Default + serde::Serialize + serde::de::DeserializeOwned,
{
    let Value::Table(mut tree) =
        Value::try_from(T::default()).context("serializing the defaults")?
    else {
        bail!("the defaults do not serialize to a table");
    };
    if let Some(base) = layers.base {
        let t: Table = toml::from_str(base).context("embedded config overlay")?;
        merge(&mut tree, t);
    }
    if let Some(path) = layers.file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let t: Table = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
            .with_context(|| format!("config file {}", path.display()))?;
        merge(&mut tree, t);
    }
    let mut sources: Vec<(String, String)> = Vec::new();
    for (name, raw) in &layers.env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if path.iter().any(String::is_empty) {
            bail!("environment variable {name}: empty key segment (use VERGE__SECTION__KEY)");
        }
        set(&mut tree, &path, raw).with_context(|| format!("environment variable {name}"))?;
        sources.push((path.join("."), format!("environment variable {name}")));
    }
    for (key, raw, flag) in &layers.flags {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            bail!("{flag} {key}: empty key segment (use section.key)");
        }
        set(&mut tree, &path, raw).with_context(|| format!("{flag} {key}"))?;
        sources.push((key.clone(), format!("{flag} {key}")));
    }
    let cfg: T = serde_path_to_error::deserialize(Value::Table(tree)).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.inner().to_string();
        // toml appends "\nin `key`" itself; the path is named by `describe`.
        let msg = msg.split("\nin `").next().unwrap_or_default().trim_end();
        anyhow::anyhow!(describe(&path, msg, &sources))
    })?;
    Ok((cfg, sources))
}

/// Checks serde cannot express (the node's own, then the log filter);
/// errors name the key and the override that set it.
fn validate(cfg: &NodeConfig, sources: &[(String, String)]) -> anyhow::Result<()> {
    match cfg.validate() {
        Ok(()) => {}
        Err(ConfigError::Key { key, message }) => bail!(describe(&key, &message, sources)),
        Err(e @ ConfigError::Named(_)) => bail!(e.to_string()),
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&cfg.log.level) {
        bail!(describe(
            "log.level",
            &format!("invalid filter `{}`: {e}", cfg.log.level),
            sources
        ));
    }
    Ok(())
}

/// `key: message`, naming an unknown key itself and the override that set
/// the value, if one did.
fn describe(path: &str, msg: &str, sources: &[(String, String)]) -> String {
    let mut path = if path == "." {
        String::new()
    } else {
        path.to_owned()
    };
    let mut msg = msg.to_owned();
    if let Some((name, tail)) = msg
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
    {
        if path != name && !path.ends_with(&format!(".{name}")) {
            path = if path.is_empty() {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
        }
        let tail = tail.trim_start_matches(", ");
        msg = if tail.is_empty() {
            "unknown key".to_owned()
        } else {
            format!("unknown key ({tail})")
        };
    }
    let from = sources
        .iter()
        .rev()
        .find(|(p, _)| {
            *p == path || path.starts_with(&format!("{p}.")) || p.starts_with(&format!("{path}."))
        })
        .map(|(_, s)| format!(" (set by {s})"))
        .unwrap_or_default();
    if path.is_empty() {
        format!("{msg}{from}")
    } else {
        format!("{path}: {msg}{from}")
    }
}

/// Deep-merge `src` into `dst`: tables merge key by key, anything else
/// replaces.
fn merge(dst: &mut Table, src: Table) {
    for (k, v) in src {
        match (dst.get_mut(&k), v) {
            (Some(Value::Table(d)), Value::Table(s)) => merge(d, s),
            (_, v) => {
                dst.insert(k, v);
            }
        }
    }
}

/// Set `path` in `tree` to `raw`, parsed as a TOML literal when it parses
/// (numbers, booleans, arrays, quoted strings) and taken as a string
/// otherwise, or when the key currently holds a string.
fn set(tree: &mut Table, path: &[String], raw: &str) -> anyhow::Result<()> {
    let Some((leaf, parents)) = path.split_last() else {
        bail!("empty key");
    };
    let mut table = tree;
    for (i, seg) in parents.iter().enumerate() {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            _ => bail!("`{}` is a value, not a section", parents[..=i].join(".")),
        };
    }
    let parsed = toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .filter(|t| t.len() == 1)
        .and_then(|mut t| t.remove("v"));
    let value = match (parsed, table.get(leaf)) {
        (Some(v), Some(Value::String(_))) if !v.is_str() => Value::String(raw.to_owned()),
        (Some(v), _) => v,
        (None, _) => Value::String(raw.to_owned()),
    };
    table.insert(leaf.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Layers<'static> {
        Layers {
            env: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Layers::default()
        }
    }

    fn with_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    fn err_of(layers: &Layers<'_>) -> String {
        format!("{:#}", load(layers).expect_err("must fail"))
    }

    #[test]
    fn no_layers_is_the_default() {
        assert_eq!(
            load(&Layers::default()).expect("loads"),
            NodeConfig::default()
        );
    }

    #[test]
    fn env_overrides_nested_keys_with_types() {
        let cfg = load(&env(&[
            ("VERGE__BROKER__LISTENERS__TCP__BIND", "127.0.0.1:1999"),
            ("VERGE__BROKER__MAX_INFLIGHT", "17"),
            ("VERGE__BROKER__ALLOW_ANONYMOUS", "true"),
            ("VERGE__BROKER__CONNECT_TIMEOUT", "250ms"),
            ("VERGE__BROKER__ACL_DEFAULT", "deny"),
            ("VERGE__NODE__NAME", "1234"),
            ("VERGE__BROKER__DEVICES_FILE", "/tmp/devices.toml"),
            ("VERGE__LOG__LEVEL", "\"debug\""),
            ("OTHER__BROKER__MAX_INFLIGHT", "x"),
        ]))
        .expect("loads");
        assert_eq!(
            cfg.broker.listeners.tcp.bind,
            "127.0.0.1:1999".parse::<SocketAddr>().expect("addr")
        );
        assert!(
            cfg.broker.listeners.tcp.enabled,
            "other keys of the section keep their defaults"
        );
        assert_eq!(cfg.broker.max_inflight, 17);
        assert!(cfg.broker.allow_anonymous);
        assert_eq!(cfg.broker.connect_timeout.get(), Duration::from_millis(250));
        assert_eq!(
            cfg.broker.acl_default,
            verge_broker::config::AclPolicy::Deny
        );
        assert_eq!(
            cfg.node.name, "1234",
            "a string key keeps a numeric-looking value as text"
        );
        assert_eq!(
            cfg.broker.devices_file.as_deref(),
            Some(Path::new("/tmp/devices.toml"))
        );
        assert_eq!(cfg.log.level, "debug");
    }

    #[test]
    fn env_beats_file_and_flags_beat_env() {
        let (_dir, path) = with_file(
            "[broker]\nmax_inflight = 5\nmax_retained = 7\n[broker.listeners.ws]\nenabled = false\n",
        );
        let mut layers = env(&[
            ("VERGE__BROKER__MAX_INFLIGHT", "6"),
            ("VERGE__BROKER__MAX_RETAINED", "8"),
        ]);
        layers.file = Some(&path);
        layers.flags = vec![("broker.max_retained".into(), "9".into(), "--set")];
        let cfg = load(&layers).expect("loads");
        assert_eq!(cfg.broker.max_inflight, 6);
        assert_eq!(cfg.broker.max_retained, 9);
        assert!(!cfg.broker.listeners.ws.enabled);
        assert_eq!(cfg.broker.listeners.ws.path, "/mqtt");
    }

    #[test]
    fn unknown_key_error_names_the_key() {
        let (_dir, path) = with_file("[broker]\nmax_inflite = 5\n");
        let err = err_of(&Layers {
            file: Some(&path),
            ..Layers::default()
        });
        assert!(err.contains("broker.max_inflite: unknown key"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");

        let err = err_of(&env(&[("VERGE__BROKER__LISTENERS__TCP__BINDD", "x")]));
        assert!(
            err.contains("broker.listeners.tcp.bindd: unknown key"),
            "{err}"
        );
        assert!(
            err.contains("VERGE__BROKER__LISTENERS__TCP__BINDD"),
            "names the variable: {err}"
        );

        let (_dir, path) = with_file("[brokr]\n");
        let err = err_of(&Layers {
            file: Some(&path),
            ..Layers::default()
        });
        assert!(err.contains("brokr: unknown key"), "{err}");
    }

    #[test]
    fn unknown_key_in_flattened_tls_section_is_named() {
        let (_dir, path) = with_file("[broker.listeners.tls]\ncertt = \"x.pem\"\n");
        let err = err_of(&Layers {
            file: Some(&path),
            ..Layers::default()
        });
        assert!(err.contains("certt"), "{err}");
        assert!(err.contains("broker.listeners.tls"), "{err}");
    }

    #[test]
    fn bad_value_error_names_the_key() {
        let err = err_of(&env(&[("VERGE__BROKER__MAX_INFLIGHT", "many")]));
        assert!(err.contains("broker.max_inflight: invalid type"), "{err}");
        assert!(
            err.contains("set by environment variable VERGE__BROKER__MAX_INFLIGHT"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");

        let (_dir, path) = with_file("[broker]\nmax_inflight = 70000\n");
        let err = err_of(&Layers {
            file: Some(&path),
            ..Layers::default()
        });
        assert!(err.contains("broker.max_inflight: invalid value"), "{err}");

        let err = err_of(&env(&[(
            "VERGE__BROKER__LISTENERS__TCP__BIND",
            "localhost",
        )]));
        assert!(err.contains("broker.listeners.tcp.bind:"), "{err}");

        let err = err_of(&env(&[("VERGE__LOG__LEVEL", "info,=[")]));
        assert!(err.contains("log.level:"), "{err}");
    }

    #[test]
    fn queue_bridge_and_store_are_checked_when_loading() {
        let (_dir, path) = with_file(
            "[[queue.lanes]]\nname = \"a\"\npriority = 1\nmax_bytes = 10\nwhen_full = \"reject\"\n",
        );
        let err = err_of(&Layers {
            file: Some(&path),
            ..Layers::default()
        });
        assert!(err.contains("queue.lanes[0].max_bytes"), "{err}");
        let err = err_of(&env(&[
            ("VERGE__BRIDGE__ENABLED", "true"),
            ("VERGE__BRIDGE__URL", "http://cloud"),
        ]));
        assert!(err.contains("bridge.url"), "{err}");
        // A disabled bridge is not checked.
        let ok = load(&env(&[("VERGE__BRIDGE__URL", "http://cloud")]));
        assert!(ok.is_ok(), "{:?}", ok.err());
        let err = err_of(&env(&[("VERGE__STORE__CHUNK", "1ms")]));
        assert!(err.contains("store.chunk"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_key() {
        let err = err_of(&env(&[("VERGE__BROKER__CONNECT_TIMEOUT", "10x")]));
        assert!(
            err.contains("broker.connect_timeout: duration `10x` has unknown unit"),
            "{err}"
        );
        let err = err_of(&env(&[("VERGE__BROKER__SYS_INTERVAL", "10")]));
        assert!(
            err.contains("broker.sys_interval: duration `10` has no unit"),
            "{err}"
        );
    }

    #[test]
    fn override_into_a_value_is_an_error() {
        let err = err_of(&env(&[("VERGE__BROKER__MAX_INFLIGHT__X", "1")]));
        assert!(err.contains("VERGE__BROKER__MAX_INFLIGHT__X"), "{err}");
        assert!(err.contains("`broker.max_inflight` is a value"), "{err}");
        let err = err_of(&env(&[("VERGE__BROKER____X", "1")]));
        assert!(err.contains("empty key segment"), "{err}");
    }

    #[test]
    fn toml_syntax_error_names_the_file() {
        let (_dir, path) = with_file("[broker\n");
        let err = err_of(&Layers {
            file: Some(&path),
            ..Layers::default()
        });
        assert!(err.contains("node.toml"), "{err}");
    }
}
