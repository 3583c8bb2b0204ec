//! Mutual TLS between nodes: rustls (ring provider: no cmake, no Go) through tokio-rustls.
//!
//! Every node has a certificate signed by the cluster's CA and a key. A connection is taken
//! only when both sides present a certificate from that CA (the accepting side verifies the
//! dialing side's as a client certificate; the dialing side verifies the accepting side's for
//! the address it dialed). A certificate may name its node: a URI subject alternative name
//! `crema://node/N` (what `crema certs init` writes). When it does, the node id claimed in the
//! hello must be that N, so a member's key is needed to speak as that member. A certificate
//! that names no node proves membership of the cluster only (as the cluster secret does), and
//! only where this node's own certificate names none either: where it does, the cluster's node
//! certificates name their nodes, and one that names none (a client certificate from the same
//! CA) is refused.
//!
//! Everything after the TLS handshake (the cluster-secret exchange if one is set too, the
//! hello, Raft messages, forwarded writes, snapshots) rides the encrypted, authenticated stream.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use super::TransportError;
use crate::types::NodeId;

/// The URI prefix of a node certificate's subject alternative name.
pub const NODE_URI_PREFIX: &str = "crema://node/";

/// This node's TLS identity and the cluster CA (see the module header).
#[derive(Clone)]
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// The node id this node's own certificate names, if any.
    own_id: Option<NodeId>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls").field("own_id", &self.own_id).finish_non_exhaustive()
    }
}

impl PeerTls {
    /// Reads PEM files: this node's certificate (chain), its private key, the cluster CA.
    ///
    /// # Errors
    /// A file cannot be read or holds nothing usable; the text names the file.
    pub fn from_files(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Result<Self, String> {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
        Self::from_pem(&read(cert)?, &read(key)?, &read(ca)?)
    }

    /// From PEM text: this node's certificate (chain), its private key, the cluster CA.
    ///
    /// # Errors
    /// PEM that does not parse, a key that does not match, a CA that is not a certificate.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<Self, String> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the node certificate: {e}"))?;
        let Some(leaf) = certs.first() else {
            return Err("the node certificate file holds no certificate".into());
        };
        let own_id = node_id_of(leaf);
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("the node key: {e}"))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(ca_pem) {
            let ca = ca.map_err(|e| format!("the CA certificate: {e}"))?;
            roots.add(ca).map_err(|e| format!("the CA certificate: {e}"))?;
        }
        if roots.is_empty() {
            return Err("the CA file holds no certificate".into());
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("the CA certificate: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("the node certificate and key: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("the node certificate and key: {e}"))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            own_id,
        })
    }

    /// The node id this node's own certificate names, if any.
    pub fn own_id(&self) -> Option<NodeId> {
        self.own_id
    }

    /// The accepting side's handshake; answers the stream and the node id the peer's
    /// certificate names, if any.
    pub(super) async fn accept(
        &self,
        tcp: TcpStream,
    ) -> Result<(TlsStream<TcpStream>, Option<NodeId>), TransportError> {
        let stream =
            self.acceptor.accept(tcp).await.map_err(|e| TransportError::Handshake(format!("TLS: {e}")))?;
        let id = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(node_id_of);
        Ok((TlsStream::Server(stream), id))
    }

    /// The dialing side's handshake with the node at `addr` (its certificate must name that
    /// address); answers the stream and the node id the peer's certificate names, if any.
    pub(super) async fn connect(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
    ) -> Result<(TlsStream<TcpStream>, Option<NodeId>), TransportError> {
        let name = ServerName::IpAddress(addr.ip().into());
        let stream = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| TransportError::Handshake(format!("TLS: {e}")))?;
        let id = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(node_id_of);
        Ok((TlsStream::Client(stream), id))
    }
}

/// The node id a certificate names: its URI subject alternative name `crema://node/N`.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(NODE_URI_PREFIX)?.parse().ok(),
        _ => None,
    })
}

/// Checks the id a peer claims in its hello against the one its certificate names, on a peer
/// port with TLS (`tls`; anything goes without).
///
/// # Errors
/// The certificate names another node; or it names none while this node's own certificate
/// names this node: in a cluster whose certificates name their nodes, one that names none is
/// not a node's. Found from outside: `crema certs init` also writes a client certificate (for
/// `redis-cli --tls`) from the same CA, naming no node, and with it anyone could speak as any
/// member on the peer port of a cluster secured by TLS alone.
pub(super) fn check_claim(
    tls: Option<&PeerTls>,
    claimed: NodeId,
    certified: Option<NodeId>,
) -> Result<(), TransportError> {
    let Some(tls) = tls else { return Ok(()) };
    match certified {
        Some(id) if id != claimed => Err(TransportError::Handshake(format!(
            "the peer claims to be node {claimed} but its certificate is node {id}'s"
        ))),
        None if tls.own_id.is_some() => Err(TransportError::Handshake(format!(
            "the peer claims to be node {claimed} with a certificate that names no node ({NODE_URI_PREFIX}N), \
             as this cluster's node certificates do (a client certificate?)"
        ))),
        _ => Ok(()),
    }
}
