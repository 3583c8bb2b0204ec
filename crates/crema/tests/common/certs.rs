//! Certificates made at run time with rcgen: a throwaway CA and node certificates for
//! 127.0.0.1 / localhost, naming their node (`crema://node/N`) or not.

use crema::PeerTls;
use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair, SanType};

/// A CA for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate and key (PEM) for 127.0.0.1 and localhost, naming node `id` if given.
    pub fn node(&self, id: Option<u64>) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        if let Some(id) = id {
            params.subject_alt_names.push(SanType::URI(format!("crema://node/{id}").try_into().unwrap()));
        }
        params.distinguished_name.push(DnType::CommonName, format!("crema node {id:?}"));
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Node `id`'s peer TLS settings.
    pub fn peer_tls(&self, id: u64) -> PeerTls {
        self.peer_tls_naming(Some(id))
    }

    /// This node's TLS identity with a certificate naming node `id`, or no node (as an
    /// operator's PKI may issue them).
    pub fn peer_tls_naming(&self, id: Option<u64>) -> PeerTls {
        let (cert, key) = self.node(id);
        PeerTls::from_pem(cert.as_bytes(), key.as_bytes(), self.pem().as_bytes()).unwrap()
    }

    /// A rustls client config presenting `cert`/`key` and trusting this CA.
    pub fn client_config(&self, cert_and_key: Option<(String, String)>) -> rustls::ClientConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.pem().as_bytes()).unwrap()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        match cert_and_key {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        }
    }
}
