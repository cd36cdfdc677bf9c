//! Mutual TLS: key pairs, fingerprints, and peers pinned by fingerprint.
//!
//! Each host has a self-signed certificate made by `shipper keygen`; it is
//! known by its fingerprint, the SHA-256 of the certificate, written in the
//! manner of Syncthing device IDs (base32 with a check character per 13,
//! grouped by 7). The sender pins the receiver's fingerprint; the receiver
//! lists the fingerprints allowed to send. There is no certificate authority
//! and no fallback to plaintext once keys are configured. Fingerprints are
//! compared in constant time.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";
/// The name both ends use in the handshake; identity comes from the pin.
const SERVER_NAME: &str = "shipper";

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// SHA-256 of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of(cert_der: &[u8]) -> Self {
        Self(Sha256::digest(cert_der).into())
    }

    /// Equality that takes the same time whatever the bytes.
    pub fn ct_eq(&self, other: &Fingerprint) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

fn luhn32(chars: &[u8]) -> u8 {
    let mut factor = 1;
    let mut sum = 0u32;
    for &c in chars {
        let code = ALPHABET.iter().position(|&a| a == c).unwrap_or(0) as u32;
        let addend = factor * code;
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / 32 + addend % 32;
    }
    ALPHABET[((32 - sum % 32) % 32) as usize]
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b32 = data_encoding::BASE32_NOPAD.encode(&self.0).into_bytes();
        let mut with_checks = Vec::with_capacity(56);
        for chunk in b32.chunks(13) {
            with_checks.extend_from_slice(chunk);
            with_checks.push(luhn32(chunk));
        }
        let groups: Vec<&str> = with_checks
            .chunks(7)
            .map(|g| std::str::from_utf8(g).expect("base32 is ASCII"))
            .collect();
        f.write_str(&groups.join("-"))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintError {
    #[error("a fingerprint has 56 characters (8 groups of 7), this has {0}")]
    Length(usize),
    #[error("character {0:?} is not in the fingerprint alphabet (A-Z, 2-7)")]
    Alphabet(char),
    #[error("check character of group {0} does not match: mistyped?")]
    Check(usize),
}

impl FromStr for Fingerprint {
    type Err = FingerprintError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let clean: Vec<u8> = s
            .chars()
            .filter(|c| *c != '-' && !c.is_whitespace())
            .map(|c| c.to_ascii_uppercase() as u32 as u8)
            .collect();
        if clean.len() != 56 {
            return Err(FingerprintError::Length(clean.len()));
        }
        if let Some(&c) = clean.iter().find(|c| !ALPHABET.contains(c)) {
            return Err(FingerprintError::Alphabet(c as char));
        }
        let mut b32 = Vec::with_capacity(52);
        for (i, chunk) in clean.chunks(14).enumerate() {
            let (data, check) = chunk.split_at(13);
            if luhn32(data) != check[0] {
                return Err(FingerprintError::Check(i + 1));
            }
            b32.extend_from_slice(data);
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(&b32)
            .map_err(|_| FingerprintError::Length(clean.len()))?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| FingerprintError::Length(56))?;
        Ok(Fingerprint(arr))
    }
}

/// This host's certificate and key.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    pub fingerprint: Fingerprint,
}

impl Identity {
    /// The certificate, DER.
    pub fn cert(&self) -> &[u8] {
        &self.cert
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }
}

/// Make a key pair in `dir` (created 0700). Refuses to replace an existing
/// one: a new key would lock out every peer that pinned the old one.
pub fn keygen(dir: &Path) -> anyhow::Result<Fingerprint> {
    let cert_path = dir.join(CERT_FILE);
    if cert_path.exists() {
        let existing = load_identity(dir)?;
        bail!(
            "{} already holds a key pair (fingerprint {}); remove it first to make a new one",
            dir.display(),
            existing.fingerprint
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .context("generating a key pair")?;
    write_private(
        &dir.join(KEY_FILE),
        made.signing_key.serialize_pem().as_bytes(),
    )?;
    crate::durable::write_atomic(&cert_path, made.cert.pem().as_bytes())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    Ok(Fingerprint::of(made.cert.der()))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    crate::durable::sync_dir(crate::durable::parent_of(path))?;
    Ok(())
}

/// Load the key pair in `dir`, refusing a key others can read.
pub fn load_identity(dir: &Path) -> anyhow::Result<Identity> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let cert = CertificateDer::from_pem_file(&cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?;
    let mode = std::fs::metadata(&key_path)
        .with_context(|| format!("reading key {}", key_path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        bail!(
            "key {} is readable by others (mode {:o}): chmod 600 it",
            key_path.display(),
            mode & 0o777
        );
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading key {}", key_path.display()))?;
    Ok(Identity {
        fingerprint: Fingerprint::of(&cert),
        cert,
        key,
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The sender's side: present `me`, accept only a receiver whose
/// certificate has fingerprint `pin`.
pub fn client_config(me: &Identity, pin: Fingerprint) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = provider();
    let verifier = Arc::new(PinnedReceiver {
        pin,
        algs: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![me.cert.clone()], me.key.clone_key())
        .context("using the sender's key pair")?;
    Ok(Arc::new(config))
}

/// The receiver's side: present `me`, accept only senders in `allowed`.
pub fn server_config(
    me: &Identity,
    allowed: Vec<Fingerprint>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let verifier = Arc::new(AllowedSenders {
        allowed,
        algs: provider.signature_verification_algorithms,
    });
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![me.cert.clone()], me.key.clone_key())
        .context("using the receiver's key pair")?;
    Ok(Arc::new(config))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("valid name")
}

/// Both verifiers check handshake signatures the same way: with the crypto
/// provider's algorithms (identity is decided by the fingerprint alone).
macro_rules! handshake_signatures_by_provider {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

#[derive(Debug)]
struct PinnedReceiver {
    pin: Fingerprint,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedReceiver {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        if got.ct_eq(&self.pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "receiver presented certificate {got}, not the pinned {}",
                self.pin
            )))
        }
    }

    handshake_signatures_by_provider!();
}

#[derive(Debug)]
struct AllowedSenders {
    allowed: Vec<Fingerprint>,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AllowedSenders {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let got = Fingerprint::of(end_entity);
        // Look at every entry, so the time taken says nothing about which
        // (or whether one) matched.
        let mut found = subtle::Choice::from(0);
        for a in &self.allowed {
            found |= a.0.ct_eq(&got.0);
        }
        if bool::from(found) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "sender certificate {got} is not in receiver.allowed_senders"
            )))
        }
    }

    handshake_signatures_by_provider!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_in_groups_and_parse_back() {
        let fp = Fingerprint::of(b"some certificate");
        let s = fp.to_string();
        assert_eq!(s.len(), 63, "{s}");
        assert_eq!(s.split('-').count(), 8);
        assert_eq!(s.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(
            s.to_lowercase().replace('-', " ").parse::<Fingerprint>(),
            Ok(fp)
        );
    }

    #[test]
    fn a_mistyped_fingerprint_is_caught_by_its_check_characters() {
        let s = Fingerprint::of(b"cert").to_string();
        let mut typo = s.clone().into_bytes();
        typo[2] = if typo[2] == b'A' { b'B' } else { b'A' };
        let typo = String::from_utf8(typo).unwrap();
        assert!(matches!(
            typo.parse::<Fingerprint>(),
            Err(FingerprintError::Check(1))
        ));
        assert!(matches!(
            "ABC".parse::<Fingerprint>(),
            Err(FingerprintError::Length(3))
        ));
        assert!(s.replace(['A', 'B'], "1").parse::<Fingerprint>().is_err());
    }

    #[test]
    fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let kd = dir.path().join("keys");
        let fp = keygen(&kd).unwrap();
        let id = load_identity(&kd).unwrap();
        assert_eq!(id.fingerprint, fp);
        let mode = std::fs::metadata(kd.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let e = keygen(&kd).unwrap_err().to_string();
        assert!(e.contains(&fp.to_string()), "{e}");
        std::fs::set_permissions(kd.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let e = load_identity(&kd).unwrap_err().to_string();
        assert!(e.contains("readable by others"), "{e}");
    }
}
