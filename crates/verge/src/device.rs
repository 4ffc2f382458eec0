//! `verge device`: add devices with argon2-hashed passwords to a registry
//! file (the broker's `devices_file`) and hash passwords.
//!
//! A new device is appended as a `[[devices]]` table, so comments and the
//! layout of the existing file are kept; the whole new text is parsed and
//! checked by the broker's own loader before it replaces the file.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, bail};
use serde::Serialize;
use verge_broker::auth::{Device, Registry, hash_password};
use verge_broker::{Authenticator, config::AclPolicy};

/// Add a device to the registry at `path`, creating the file if missing.
pub fn add(
    path: &Path,
    username: &str,
    password: Option<String>,
    client_id: Option<String>,
) -> anyhow::Result<()> {
    if username.is_empty() {
        bail!("--username must not be empty");
    }
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let registry: Registry = toml::from_str(&old)
        .map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
        .with_context(|| format!("registry {}", path.display()))?;
    if registry.devices.iter().any(|d| d.username == username) {
        bail!(
            "registry {}: a device with username `{username}` already exists",
            path.display()
        );
    }
    let password = password_from(password)?;
    let hash = hash_password(&password).context("hashing the password")?;
    let device = Device {
        username: username.to_owned(),
        password_hash: Some(hash),
        client_id,
        acl: Vec::new(),
    };
    let new = append(&old, device)?;
    // Check the result the way the broker will read it.
    let parsed: Registry =
        toml::from_str(&new).context("the updated registry does not parse (this is a bug)")?;
    Authenticator::new(parsed, false, AclPolicy::Deny)
        .context("the updated registry is invalid")?;
    write_atomically(path, &new)?;
    eprintln!("added device `{username}` to {}", path.display());
    Ok(())
}

/// Print the argon2 hash of a password.
pub fn hash(password: Option<String>) -> anyhow::Result<()> {
    let password = password_from(password)?;
    println!(
        "{}",
        hash_password(&password).context("hashing the password")?
    );
    Ok(())
}

/// `old` with one more `[[devices]]` table at the end.
fn append(old: &str, device: Device) -> anyhow::Result<String> {
    #[derive(Serialize)]
    struct One {
        devices: Vec<Device>,
    }
    let table = toml::to_string(&One {
        devices: vec![device],
    })
    .context("formatting the device entry")?;
    let mut new = String::with_capacity(old.len() + table.len() + 2);
    new.push_str(old);
    if !new.is_empty() {
        if !new.ends_with('\n') {
            new.push('\n');
        }
        new.push('\n');
    } else {
        new.push_str(
            "# Verge device registry (broker.devices_file); edit with `verge device add`.\n\n",
        );
    }
    new.push_str(&table);
    Ok(new)
}

/// The given password, or one line read from standard input.
fn password_from(given: Option<String>) -> anyhow::Result<String> {
    let password = match given {
        Some(p) => p,
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("password (input is echoed): ");
                let _ = std::io::stderr().flush();
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            line.trim_end_matches(['\n', '\r']).to_owned()
        }
    };
    if password.is_empty() {
        bail!("the password must not be empty");
    }
    Ok(password)
}

/// Replace `path` with `text` through a temporary file in the same folder.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())
        .context("writing the registry")?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str) -> Device {
        Device {
            username: name.into(),
            password_hash: Some(
                "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
            ),
            client_id: Some("c \"quoted\"".into()),
            acl: Vec::new(),
        }
    }

    #[test]
    fn append_keeps_comments_and_existing_devices() {
        let old = "# my devices\n[[devices]]\nusername = \"a\"\n[[devices.acl]]\npermission = \"allow\"\naction = \"all\"\ntopic = \"#\"";
        let new = append(old, device("b")).expect("appends");
        assert!(new.starts_with(old), "{new}");
        let reg: Registry = toml::from_str(&new).expect("parses");
        assert_eq!(reg.devices.len(), 2);
        assert_eq!(
            reg.devices[0].acl.len(),
            1,
            "the new table does not join the old one"
        );
        assert_eq!(reg.devices[1].username, "b");
        assert_eq!(reg.devices[1].client_id.as_deref(), Some("c \"quoted\""));
    }

    #[test]
    fn append_to_empty_file() {
        let new = append("", device("a")).expect("appends");
        let reg: Registry = toml::from_str(&new).expect("parses");
        assert_eq!(reg.devices.len(), 1);
    }

    #[test]
    fn add_creates_then_refuses_duplicates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("devices.toml");
        add(&path, "sensor-1", Some("s3cret".into()), None).expect("first add");
        add(
            &path,
            "sensor-2",
            Some("other".into()),
            Some("client-2".into()),
        )
        .expect("second add");
        let err = add(&path, "sensor-1", Some("again".into()), None).expect_err("duplicate");
        assert!(err.to_string().contains("already exists"), "{err}");
        let auth = Authenticator::load(&path, false, AclPolicy::Deny).expect("broker loads it");
        assert!(
            auth.authenticate("x", Some("sensor-1"), Some(b"s3cret"), None)
                .is_ok()
        );
        assert!(
            auth.authenticate("client-2", Some("sensor-2"), Some(b"other"), None)
                .is_ok()
        );
        assert!(
            auth.authenticate("x", Some("sensor-2"), Some(b"other"), None)
                .is_err(),
            "pinned client id"
        );
    }
}
