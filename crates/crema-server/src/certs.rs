//! `crema certs init`: a cluster CA and certificates for its nodes and a client, made with
//! rcgen, so the secure setup can be tried with one command. Node certificates name
//! `localhost`, `127.0.0.1`, every `--host` given, and their node (`crema://node/N`, which the
//! peer port checks against the id a node claims). Keys are written `0600`, certificates
//! `0644`, in a directory created `0700`.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    /// Every file, in the order written.
    pub files: Vec<PathBuf>,
}

fn write(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn leaf(
    names: &[String],
    common_name: &str,
    usage: ExtendedKeyUsagePurpose,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    Ok(params)
}

/// Writes `ca.crt`, `ca.key`, `node-1.crt`, `node-1.key`, ... `node-N.*`, `client.crt` and
/// `client.key` into `dir`.
///
/// # Errors
/// `dir` already holds a CA key (nothing is overwritten), a file cannot be written, or a host
/// name is not valid in a certificate.
pub fn init(dir: &Path, nodes: u64, hosts: &[String]) -> anyhow::Result<Written> {
    if !(1..=100).contains(&nodes) {
        bail!("--nodes must be 1 to 100");
    }
    if dir.join("ca.key").exists() {
        bail!("{} already holds a CA key: remove the directory or choose another --dir", dir.display());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut files = Vec::new();
    let mut put = |name: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        let path = dir.join(name);
        write(&path, text, mode)?;
        files.push(path);
        Ok(())
    };

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "crema cluster CA");
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca: Certificate = ca_params.self_signed(&ca_key)?;
    put("ca.crt", &ca.pem(), 0o644)?;
    put("ca.key", &ca_key.serialize_pem(), 0o600)?;

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(hosts.iter().cloned());
    for id in 1..=nodes {
        let key = KeyPair::generate()?;
        // A node certificate serves both ends of a peer connection, and the RESP port.
        let mut params = leaf(&names, &format!("crema node {id}"), ExtendedKeyUsagePurpose::ServerAuth)?;
        params.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth);
        params.subject_alt_names.push(SanType::URI(format!("{}{id}", crema::NODE_URI_PREFIX).try_into()?));
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        put(&format!("node-{id}.crt"), &cert.pem(), 0o644)?;
        put(&format!("node-{id}.key"), &key.serialize_pem(), 0o600)?;
    }
    let key = KeyPair::generate()?;
    let cert =
        leaf(&[], "crema client", ExtendedKeyUsagePurpose::ClientAuth)?.signed_by(&key, &ca, &ca_key)?;
    put("client.crt", &cert.pem(), 0o644)?;
    put("client.key", &key.serialize_pem(), 0o600)?;
    Ok(Written { files })
}
