//! TLS on the RESP port (`--tls-cert`, `--tls-key`, optional `--tls-ca`): rustls with the ring
//! provider through tokio-rustls, as on the peer port. With `--tls-ca`, clients must present a
//! certificate that CA signed (mutual TLS); without it, any client may connect and
//! authenticates with AUTH as usual. Redis clients connect with `rediss://` or
//! `redis-cli --tls --cacert ca.crt`.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// The RESP port's TLS acceptor.
#[derive(Clone)]
pub struct RespTls(pub TlsAcceptor);

impl std::fmt::Debug for RespTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RespTls(..)")
    }
}

/// The acceptor for the RESP port.
///
/// # Errors
/// A file cannot be read or does not hold what it should; the text names the file.
pub fn acceptor(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<RespTls, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| format!("{}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(&read(ca)?) {
                roots.add(c.map_err(|e| format!("{}: {e}", ca.display()))?).map_err(|e| e.to_string())?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config =
        builder.with_single_cert(certs, key).map_err(|e| format!("the TLS certificate and key: {e}"))?;
    Ok(RespTls(TlsAcceptor::from(Arc::new(config))))
}
