//! Client TLS settings (rustls, ring provider): the only place Verge builds
//! the roots a client trusts, for the webhook action, the cloud agent and
//! the bridge.
//!
//! Design note: the default roots are Mozilla's, compiled in
//! (`webpki-roots`), rather than read from the operating system
//! (`rustls-native-certs`): one small crate and no platform crates or file
//! I/O, and the same behaviour on minimal edge images that ship no CA
//! bundle. New public roots need a new build; private CAs come from a CA
//! file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Why client TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file cannot be read or parsed.
    #[error("{}: {error}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: String,
    },
    /// The CA file holds no certificate.
    #[error("{}: holds no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the settings.
    #[error("tls setup failed: {0}")]
    Setup(String),
}

/// Client settings that trust the PEM certificates in `ca_file` only, or
/// Mozilla's roots when `None`. No ALPN; see [`http_client_config`].
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    Ok(Arc::new(build(roots(ca_file)?, &[])?))
}

/// As [`client_config`], offering HTTP/1.1 by ALPN. With Mozilla's roots
/// the settings are made once per process and shared (one session cache).
pub fn http_client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    const ALPN: &[&[u8]] = &[b"http/1.1"];
    if ca_file.is_some() {
        return Ok(Arc::new(build(roots(ca_file)?, ALPN)?));
    }
    static SHARED: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = SHARED.get() {
        return Ok(config.clone());
    }
    let config = Arc::new(build(roots(None)?, ALPN)?);
    Ok(SHARED.get_or_init(|| config).clone())
}

/// Client settings trusting exactly `roots` (tests use a self-signed
/// certificate), offering HTTP/1.1 by ALPN.
pub fn http_client_config_with(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    Ok(Arc::new(build(roots, &[b"http/1.1"])?))
}

/// The certificates of a CA file, or Mozilla's roots.
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let Some(path) = ca_file else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let bad = |e: &dyn std::fmt::Display| TlsError::CaFile {
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| bad(&e))?;
    }
    Ok(roots)
}

fn build(roots: RootCertStore, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_refused_with_its_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let e = client_config(Some(&empty)).expect_err("no certificate");
        assert!(
            e.to_string().ends_with("empty.pem: holds no certificate"),
            "{e}"
        );
        let e = client_config(Some(&dir.path().join("missing.pem"))).expect_err("missing");
        assert!(matches!(e, TlsError::CaFile { .. }), "{e}");
        assert!(e.to_string().contains("missing.pem: "), "{e}");
    }

    #[test]
    fn mozilla_roots_and_a_ca_file() {
        let config = http_client_config(None).expect("mozilla");
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(
            client_config(None)
                .expect("mozilla")
                .alpn_protocols
                .is_empty()
        );
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        let dir = tempfile::tempdir().expect("tmp");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, key.cert.pem()).expect("write");
        assert!(client_config(Some(&ca)).is_ok());
        assert!(http_client_config(Some(&ca)).is_ok());
    }
}
