//! The DTLS server's OpenSSL context, built once from `[coap.dtls]`: DTLS
//! 1.2 only, PSK cipher suites with the devices' keys and, when
//! `cert`/`key`/`client_ca` are set, ECDHE suites with a required client
//! certificate from that CA; stateless HelloVerifyRequest cookies (a keyed
//! hash of the peer's address).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::nid::Nid;
use openssl::ssl::{
    Ssl, SslContext, SslFiletype, SslMethod, SslOptions, SslRef, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use sha2::{Digest, Sha256};

use crate::config::DtlsConfig;
use crate::error::CoapError;

/// PSK suites offered, best first. RFC 7252 §9.1.3.1 makes
/// TLS_PSK_WITH_AES_128_CCM_8 mandatory (the one tinydtls clients have);
/// the ECDHE_PSK ones add forward secrecy for clients that have them.
const CIPHERS: &str = "ECDHE-PSK-CHACHA20-POLY1305:PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:\
PSK-AES128-CCM:PSK-AES128-CCM8:ECDHE-PSK-AES128-CBC-SHA256:PSK-AES128-CBC-SHA256";

/// Certificate suites, offered when the node has a certificate: RFC 7252
/// §9.1.3.3 makes TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 mandatory.
const CERT_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-ECDSA-AES128-CCM8:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305";

/// Bytes of a HelloVerifyRequest cookie.
const COOKIE_LEN: usize = 16;

/// The server context and what a new session needs.
pub(crate) struct DtlsContext {
    /// DTLS 1.2 server context with the PSK and cookie callbacks.
    ctx: SslContext,
    /// Where a session keeps its peer's address (for the cookie).
    peer_index: Index<Ssl, SocketAddr>,
    /// `coap.dtls.mtu`.
    mtu: u32,
}

impl DtlsContext {
    /// Build the context; reads key files. The error names the key.
    pub fn new(cfg: &DtlsConfig) -> Result<DtlsContext, CoapError> {
        let mut keys: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for (i, p) in cfg.psk.iter().enumerate() {
            keys.insert(p.identity.as_bytes().to_vec(), p.resolve(i)?);
        }
        let ssl_err = |what: &str, e: ErrorStack| CoapError::Dtls(format!("{what}: {e}"));
        let mut secret = [0u8; 32];
        openssl::rand::rand_bytes(&mut secret).map_err(|e| ssl_err("random cookie secret", e))?;
        let peer_index = Ssl::new_ex_index::<SocketAddr>().map_err(|e| ssl_err("ex index", e))?;
        let mut b =
            SslContext::builder(SslMethod::dtls_server()).map_err(|e| ssl_err("context", e))?;
        b.set_min_proto_version(Some(SslVersion::DTLS1_2))
            .map_err(|e| ssl_err("protocol version", e))?;
        let files = (&cfg.cert, &cfg.key, &cfg.client_ca);
        if let (Some(cert), Some(key), Some(ca)) = files {
            let file_err = |k: &str, p: &std::path::Path, e: ErrorStack| {
                CoapError::Config(format!("coap.dtls.{k} {}: {e}", p.display()))
            };
            b.set_certificate_chain_file(cert)
                .map_err(|e| file_err("cert", cert, e))?;
            b.set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| file_err("key", key, e))?;
            b.check_private_key().map_err(|e| file_err("key", key, e))?;
            b.set_ca_file(ca)
                .map_err(|e| file_err("client_ca", ca, e))?;
            // Asked only in certificate suites; PSK suites never send a
            // CertificateRequest.
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
            b.set_cipher_list(&format!("{CIPHERS}:{CERT_CIPHERS}"))
                .map_err(|e| ssl_err("cipher list", e))?;
        } else {
            b.set_cipher_list(CIPHERS)
                .map_err(|e| ssl_err("cipher list", e))?;
        }
        // The BIO is memory, not a socket: the MTU is set, not queried. Our
        // order of suites wins (forward secrecy when the client has it).
        b.set_options(
            SslOptions::COOKIE_EXCHANGE
                | SslOptions::NO_QUERY_MTU
                | SslOptions::NO_TICKET
                | SslOptions::NO_RENEGOTIATION
                | SslOptions::CIPHER_SERVER_PREFERENCE,
        );
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        let keys = Arc::new(keys);
        b.set_psk_server_callback(move |_ssl, identity, out| {
            // Unknown identity: a zero-length key fails the handshake.
            let Some(key) = identity.and_then(|id| keys.get(id)) else {
                return Ok(0);
            };
            if key.len() > out.len() {
                return Ok(0);
            }
            out[..key.len()].copy_from_slice(key);
            Ok(key.len())
        });
        let secret = Arc::new(secret);
        let (gen_secret, verify_secret) = (secret.clone(), secret);
        b.set_cookie_generate_cb(move |ssl, out| {
            let c = cookie(&gen_secret, ssl.ex_data(peer_index));
            let n = COOKIE_LEN.min(out.len());
            out[..n].copy_from_slice(&c[..n]);
            Ok(n)
        });
        b.set_cookie_verify_cb(move |ssl, got| {
            let want = cookie(&verify_secret, ssl.ex_data(peer_index));
            got.len() == COOKIE_LEN && openssl::memcmp::eq(got, &want[..COOKIE_LEN])
        });
        Ok(DtlsContext {
            ctx: b.build(),
            peer_index,
            mtu: cfg.mtu,
        })
    }

    /// A server session for `peer`.
    pub fn session(&self, peer: SocketAddr) -> Result<Ssl, ErrorStack> {
        let mut ssl = Ssl::new(&self.ctx)?;
        ssl.set_ex_data(self.peer_index, peer);
        ssl.set_mtu(self.mtu)?;
        Ok(ssl)
    }
}

/// Who a finished handshake proved: the PSK identity, or the common name
/// of the verified client certificate.
pub(crate) fn identity(ssl: &SslRef) -> Option<String> {
    if let Some(id) = ssl.psk_identity() {
        return Some(String::from_utf8_lossy(id).into_owned());
    }
    let cert = ssl.peer_certificate()?;
    let cn = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
    cn.data().to_string().ok()
}

/// The cookie of a peer: SHA-256 over the secret and its address (so it
/// proves the client receives datagrams at that address, RFC 6347 §4.2.1).
fn cookie(secret: &[u8; 32], peer: Option<&SocketAddr>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(peer.map(|p| p.to_string()).unwrap_or_default().as_bytes());
    h.finalize().into()
}
