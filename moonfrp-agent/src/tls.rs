//! TLS pieces the server (its web config) and the command-line clients share: PEM files read
//! with a size bound and errors that name the file, and one crypto provider (ring, already
//! what the outbound HTTP client uses).
use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::untrusted;

/// Largest PEM file read (a certificate chain or a CA bundle; Debian's whole bundle is 220 KiB).
pub const MAX_PEM_BYTES: u64 = 4 << 20;

/// Where Debian, Ubuntu and Alpine keep the system's CA bundle (RHEL links it there too).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<String, String> {
    untrusted::read_text(path, MAX_PEM_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", untrusted::path(path)))
}

/// The certificates of a PEM file (a chain: the leaf first), at least one.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read(path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "{}: not a PEM certificate file ({e})",
                untrusted::path(path)
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
            untrusted::path(path)
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
        format!(
            "{}: no private key in it ({e}; expected -----BEGIN PRIVATE KEY----- or an RSA/EC key)",
            untrusted::path(path)
        )
    })
}

/// The certificates of a PEM file as trust anchors.
pub fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store.add(cert).map_err(|e| {
            format!(
                "{}: a certificate is not a usable CA: {e}",
                untrusted::path(path)
            )
        })?;
    }
    Ok(store)
}

/// A client's TLS settings: trust `ca` (else the system's bundle), and present
/// `identity` (certificate and key files) when the server asks for one.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let roots = roots(ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE)))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key_file)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_file)?)
            .map_err(|e| {
                format!(
                    "{} and {} do not make a client identity: {e}",
                    untrusted::path(cert),
                    untrusted::path(key_file)
                )
            })?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    /// Found by the `web_config` fuzz target (`fuzz/corpus/web_config/control-character-in-path`):
    /// a file name from a config was echoed with its tab.
    #[test]
    fn a_file_name_is_shown_escaped() {
        let e =
            super::certs(std::path::Path::new("/nonexistent/agent\t\u{1b}[31m.crt")).unwrap_err();
        assert!(e.contains("agent\\t\\u{1b}[31m.crt"), "{e}");
        assert!(!e.chars().any(crate::untrusted::is_unsafe), "{e}");
    }
}
