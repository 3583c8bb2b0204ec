//! Peer authentication with a shared cluster secret: HMAC-SHA256 challenge and response, both
//! ways, before the hello (the minimum the peer port needs when it is not behind mutual TLS).
//!
//! The accepting side speaks first with a random challenge; the dialing side answers with its
//! own challenge and `HMAC(secret, "crema-peer-dial-v1" ‖ accept challenge ‖ dial challenge)`;
//! the accepting side checks it (in constant time) and proves itself with the same over
//! `"crema-peer-accept-v1"`. Only then is the hello sent, so a process without the secret learns
//! nothing (no id, no term, no log position) and can send nothing a node acts on. Fresh
//! challenges on both sides make a recorded exchange useless, and the two labels keep one
//! side's answer from serving as the other's.
//!
//! What the secret does not do: it proves membership of the cluster, not which member (any
//! holder can claim any member id), and it does not encrypt or sign the frames that follow,
//! so someone on the path between two nodes can read and alter them. Mutual TLS does both.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::envelope::Envelope;
use super::peer::Connection;
use super::{TransportConfig, TransportError};

const DIAL_LABEL: &[u8] = b"crema-peer-dial-v1";
const ACCEPT_LABEL: &[u8] = b"crema-peer-accept-v1";
/// Bytes of each side's challenge.
pub(crate) const CHALLENGE_BYTES: usize = 32;
/// The shortest secret accepted: 128 bits.
pub const MIN_SECRET_BYTES: usize = 16;

/// The cluster secret every node of a cluster shares (see the module header).
#[derive(Clone)]
pub struct ClusterSecret(Vec<u8>);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// The secret `bytes`.
    ///
    /// # Errors
    /// Shorter than 16 bytes (`MIN_SECRET_BYTES`).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, String> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the cluster secret is {} bytes; it must be at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                bytes.len()
            ));
        }
        Ok(Self(bytes))
    }

    fn mac(
        &self,
        label: &[u8],
        accept: &[u8; CHALLENGE_BYTES],
        dial: &[u8; CHALLENGE_BYTES],
    ) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(accept);
        mac.update(dial);
        mac
    }

    /// HMAC-SHA256 of `label ‖ data` (gossip packets carry it; see `discovery::memberlist`).
    pub(crate) fn tag(&self, label: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is [`Self::tag`] of `label ‖ data` (in constant time).
    pub(crate) fn check_tag(&self, label: &[u8], data: &[u8], tag: &[u8]) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(label);
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }

    fn proof(&self, label: &[u8], accept: &[u8; CHALLENGE_BYTES], dial: &[u8; CHALLENGE_BYTES]) -> Vec<u8> {
        self.mac(label, accept, dial).finalize().into_bytes().to_vec()
    }

    fn verify(
        &self,
        label: &[u8],
        accept: &[u8; CHALLENGE_BYTES],
        dial: &[u8; CHALLENGE_BYTES],
        proof: &[u8],
    ) -> bool {
        self.mac(label, accept, dial).verify_slice(proof).is_ok()
    }
}

fn challenge() -> [u8; CHALLENGE_BYTES] {
    rand::random()
}

/// The accepting side of the exchange.
///
/// # Errors
/// The peer did not answer in time, answered something else, or does not know the secret.
pub(super) async fn accept(
    conn: &mut Connection,
    secret: &ClusterSecret,
    config: &TransportConfig,
) -> Result<(), TransportError> {
    let ours = challenge();
    conn.write_frame(&Envelope::AuthChallenge { challenge: ours }.to_frame()).await?;
    let answer = tokio::time::timeout(config.handshake_timeout, conn.read_envelope(config))
        .await
        .map_err(|_| TransportError::Handshake("no answer to the cluster-secret challenge".into()))??;
    let Envelope::AuthProof { challenge: theirs, proof } = answer else {
        return Err(TransportError::Handshake(
            "the peer did not answer the cluster-secret challenge (is --cluster-secret set on every node?)"
                .into(),
        ));
    };
    if !secret.verify(DIAL_LABEL, &ours, &theirs, &proof) {
        return Err(TransportError::Handshake("the peer does not know the cluster secret".into()));
    }
    let reply = Envelope::AuthProof {
        challenge: [0; CHALLENGE_BYTES],
        proof: secret.proof(ACCEPT_LABEL, &ours, &theirs),
    };
    conn.write_frame(&reply.to_frame()).await?;
    Ok(())
}

/// The dialing side of the exchange.
///
/// # Errors
/// As [`accept`], seen from the other side.
pub(super) async fn dial(
    conn: &mut Connection,
    secret: &ClusterSecret,
    config: &TransportConfig,
) -> Result<(), TransportError> {
    let first = tokio::time::timeout(config.handshake_timeout, conn.read_envelope(config)).await.map_err(
        |_| {
            TransportError::Handshake(
                "the peer did not ask for the cluster secret (is --cluster-secret set on every node?)".into(),
            )
        },
    )??;
    let Envelope::AuthChallenge { challenge: theirs } = first else {
        return Err(TransportError::Handshake("expected a cluster-secret challenge".into()));
    };
    let ours = challenge();
    let answer = Envelope::AuthProof { challenge: ours, proof: secret.proof(DIAL_LABEL, &theirs, &ours) };
    conn.write_frame(&answer.to_frame()).await?;
    let reply = tokio::time::timeout(config.handshake_timeout, conn.read_envelope(config)).await.map_err(
        |_| TransportError::Handshake("the peer did not prove it knows the cluster secret".into()),
    )??;
    match reply {
        Envelope::AuthProof { proof, .. } if secret.verify(ACCEPT_LABEL, &theirs, &ours, &proof) => Ok(()),
        _ => Err(TransportError::Handshake("the peer does not know the cluster secret".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_the_secret_both_challenges_and_the_direction() {
        let secret = ClusterSecret::new(*b"0123456789abcdef").unwrap();
        let other = ClusterSecret::new(*b"0123456789abcdeF").unwrap();
        let (a, d) = ([1; CHALLENGE_BYTES], [2; CHALLENGE_BYTES]);
        let proof = secret.proof(DIAL_LABEL, &a, &d);
        assert!(secret.verify(DIAL_LABEL, &a, &d, &proof));
        assert!(!other.verify(DIAL_LABEL, &a, &d, &proof), "another secret");
        assert!(!secret.verify(ACCEPT_LABEL, &a, &d, &proof), "the other direction");
        assert!(!secret.verify(DIAL_LABEL, &d, &a, &proof), "challenges swapped");
        assert!(!secret.verify(DIAL_LABEL, &a, &[3; CHALLENGE_BYTES], &proof), "another challenge");
        assert!(!secret.verify(DIAL_LABEL, &a, &d, &proof[..16]), "a cut proof");
        assert!(ClusterSecret::new(*b"short").is_err());
        assert_eq!(format!("{secret:?}"), "ClusterSecret(..)", "never printed");
    }
}
