//! A bundle object's seal: who sent it, and that it is whole, so that
//! write access to the bucket alone cannot publish into a web root.
//!
//! The sender signs, with the private key of its key pair (ECDSA P-256,
//! as `shipper keygen` makes it), a message naming the bucket's prefix,
//! the bundle's sequence, the one sealed before it, its size, its BLAKE3
//! and where it belongs (the chain, or a base: see [`Belongs`]); the seal
//! carries the signature and the sender's certificate. A receiver takes the bundle
//! only when the certificate's fingerprint is in `allowed_senders`, the
//! signature holds for that message, and the zip it downloaded has that
//! size and hash ([`Sealed::check_zip`]). Pure, apart from the randomness
//! signing takes.

use data_encoding::BASE64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use serde::{Deserialize, Serialize};

use super::names::Kind;
use super::url::BucketUrl;
use crate::tls::{Fingerprint, Identity};

/// The seal format this build writes; it reads this one and
/// [`FIRST_FORMAT`] (seals of the chain only, from before bases).
pub const FORMAT: u32 = 2;
/// The first seal format, still read.
pub const FIRST_FORMAT: u32 = 1;
/// The largest seal read: a certificate and a signature take about 1 KiB.
pub const MAX_SEAL_BYTES: usize = 16 << 10;

/// A seal as stored, `b/SEQ.seal` beside `b/SEQ.zip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seal {
    pub format: u32,
    /// The sender's id (`sender.id`), which its manifests repeat.
    pub sender: String,
    pub seq: u64,
    /// The bundle sealed before it in this bucket (0: none), so a receiver
    /// notices one missing (deleted, or not yet listed) instead of
    /// skipping it: sequences the bucket never held (bundles for one
    /// receiver alone) are gaps a seal accounts for. In the chain, the
    /// chain's bundle before it; in a base, the base's member before it
    /// (0 for its first).
    pub prev: u64,
    pub size: u64,
    /// BLAKE3 of the zip, hex.
    pub hash: String,
    /// The sender's certificate, DER, base64.
    pub cert: String,
    /// ECDSA P-256 with SHA-256 (ASN.1) over the message `message` builds, base64.
    pub signature: String,
    /// 0: a bundle of the chain; else a member of the base whose first
    /// member this is (format 2).
    #[serde(default)]
    pub base: u64,
    /// The last member of its base (format 2): set only in a base's end.
    #[serde(default)]
    pub last: bool,
    /// Bundles numbered below this may be gone from the bucket: the sender
    /// let them go once newer bases were complete (format 2). A receiver
    /// whose next bundle is below it takes a base; above it, a bundle
    /// missing was deleted by someone else, and is waited for.
    #[serde(default)]
    pub kept_from: u64,
}

/// Where a sealed bundle belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Belongs {
    /// The chain of changes every receiver follows.
    Chain,
    /// A base: a whole tree, which a receiver starting empty or fallen
    /// behind takes with the chain from `first` on; `last`: its last
    /// member, which makes it complete.
    Base { first: u64, last: bool },
}

impl Seal {
    /// What this seal, made by the sender of `fingerprint`, says: for a
    /// seal that holds.
    pub fn held_by(self, fingerprint: Fingerprint) -> Sealed {
        Sealed {
            fingerprint,
            belongs: Belongs::of(&self),
            kept_from: self.kept_from,
            sender: self.sender,
            seq: self.seq,
            prev: self.prev,
            size: self.size,
            hash: self.hash,
        }
    }
}

impl Belongs {
    fn of(seal: &Seal) -> Self {
        match seal.base {
            0 => Belongs::Chain,
            first => Belongs::Base {
                first,
                last: seal.last,
            },
        }
    }
}

/// What a seal is stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// The seal of bundle `seq`, listed as `kind`.
    Bundle(u64, Kind),
    /// The end of the base beginning at `first`.
    BaseEnd { first: u64 },
}

/// What is signed: every field a receiver acts on, and the bucket and
/// prefix, so a seal copied into another bucket or under another site's
/// prefix does not hold there.
fn message(url: &BucketUrl, s: &Seal) -> Vec<u8> {
    let Seal {
        format,
        sender,
        seq,
        prev,
        size,
        hash,
        base,
        last,
        kept_from,
        ..
    } = s;
    // The id is JSON-quoted: no id can pass for another line.
    let sender = serde_json::to_string(sender).expect("a string serializes");
    let mut msg =
        format!("shipper-bucket-{format}\n{url}\n{sender}\n{seq}\n{prev}\n{size}\n{hash}\n");
    if *format > FIRST_FORMAT {
        msg.push_str(&format!("{base}\n{last}\n{kept_from}\n"));
    }
    msg.into_bytes()
}

/// The sender's key pair, ready to seal bundles.
pub struct Sealer {
    key: EcdsaKeyPair,
    cert: String,
    rng: SystemRandom,
}

/// Why a key pair cannot seal.
#[derive(Debug, thiserror::Error)]
#[error(
    "the key pair ({0}) cannot sign bundles for a bucket: it is not an ECDSA P-256 key in PKCS#8, as shipper keygen makes"
)]
pub struct NotSealing(String);

impl Sealer {
    pub fn new(id: &Identity) -> Result<Self, NotSealing> {
        let rng = SystemRandom::new();
        let rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8) = id.key() else {
            return Err(NotSealing(id.fingerprint.to_string()));
        };
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|_| NotSealing(id.fingerprint.to_string()))?;
        Ok(Self {
            key,
            cert: BASE64.encode(id.cert()),
            rng,
        })
    }

    /// The seal of bundle `seq` (sealed after `prev`) of sender `id`, of
    /// `size` bytes hashing to `hash`, stored in `url`, belonging where
    /// `belongs` says, the bucket keeping every bundle from `kept_from` on.
    pub fn seal(
        &self,
        url: &BucketUrl,
        id: &str,
        (seq, prev, size): (u64, u64, u64),
        hash: &blake3::Hash,
        (belongs, kept_from): (Belongs, u64),
    ) -> Seal {
        let (base, last) = match belongs {
            Belongs::Chain => (0, false),
            Belongs::Base { first, last } => (first, last),
        };
        let mut seal = Seal {
            format: FORMAT,
            sender: id.to_owned(),
            seq,
            prev,
            size,
            hash: hash.to_hex().to_string(),
            cert: self.cert.clone(),
            signature: String::new(),
            base,
            last,
            kept_from,
        };
        let signature = self
            .key
            .sign(&self.rng, &message(url, &seal))
            .expect("signing with a loaded P-256 key does not fail");
        seal.signature = BASE64.encode(signature.as_ref());
        seal
    }
}

/// Why a seal is not taken: the bundle it seals is not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealRefused {
    #[error("not a seal shipper writes: {0}")]
    Malformed(String),
    #[error("seal format {0}, newer than this receiver reads ({FORMAT}): upgrade it")]
    Format(u32),
    #[error("sealed by {0}, which is not in allowed_senders")]
    UnknownSender(Fingerprint),
    #[error("its signature does not hold: the seal was altered, or not made with the key of {0}")]
    BadSignature(Fingerprint),
    #[error("it seals bundle {sealed} but is stored as bundle {named}")]
    Misnamed { named: u64, sealed: u64 },
    #[error("it seals a bundle that belongs to {sealed:?} but is stored as {named:?}")]
    Misplaced { named: Named, sealed: Belongs },
}

/// Why a downloaded zip is not the bundle its seal names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the zip is {size} bytes with BLAKE3 {hash}; its seal says {sealed_size} bytes with {sealed_hash}"
)]
pub struct ZipMismatch {
    pub size: u64,
    pub hash: String,
    pub sealed_size: u64,
    pub sealed_hash: String,
}

/// A seal that holds: the bundle it names may be downloaded and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub fingerprint: Fingerprint,
    /// The sender's id.
    pub sender: String,
    pub seq: u64,
    pub prev: u64,
    pub size: u64,
    pub hash: String,
    pub belongs: Belongs,
    pub kept_from: u64,
}

impl Sealed {
    /// Whether the zip downloaded, `size` bytes hashing to `hash`, is the one sealed.
    pub fn check_zip(&self, size: u64, hash: &blake3::Hash) -> Result<(), ZipMismatch> {
        let hash = hash.to_hex();
        if size == self.size && hash.as_str() == self.hash {
            return Ok(());
        }
        Err(ZipMismatch {
            size,
            hash: hash.to_string(),
            sealed_size: self.size,
            sealed_hash: self.hash.clone(),
        })
    }
}

/// Open the seal `bytes`, stored in `url` as `named`: it holds when it
/// is well formed, is what it is stored as, was made by a sender in
/// `allowed` and its signature holds.
pub fn open(
    bytes: &[u8],
    url: &BucketUrl,
    named: Named,
    allowed: &[Fingerprint],
) -> Result<Sealed, SealRefused> {
    if bytes.len() > MAX_SEAL_BYTES {
        return Err(SealRefused::Malformed(format!(
            "{} bytes, over the {MAX_SEAL_BYTES} a seal may have",
            bytes.len()
        )));
    }
    let seal: Seal =
        serde_json::from_slice(bytes).map_err(|e| SealRefused::Malformed(e.to_string()))?;
    check_fields(&seal, named)?;
    let malformed = |what: &str| SealRefused::Malformed(format!("its {what} is not base64"));
    let cert = BASE64
        .decode(seal.cert.as_bytes())
        .map_err(|_| malformed("certificate"))?;
    let signature = BASE64
        .decode(seal.signature.as_bytes())
        .map_err(|_| malformed("signature"))?;
    let sender = Fingerprint::of(&cert);
    if !allowed.iter().any(|a| a.ct_eq(&sender)) {
        return Err(SealRefused::UnknownSender(sender));
    }
    let der = rustls::pki_types::CertificateDer::from(cert.as_slice());
    let holds = webpki::EndEntityCert::try_from(&der).is_ok_and(|c| {
        let msg = message(url, &seal);
        c.verify_signature(webpki::ring::ECDSA_P256_SHA256, &msg, &signature)
            .is_ok()
    });
    if !holds {
        return Err(SealRefused::BadSignature(sender));
    }
    Ok(seal.held_by(sender))
}

/// Whether `seal`'s format is one read here, and it seals what it is
/// stored as: its number, and the chain or a base.
fn check_fields(seal: &Seal, named: Named) -> Result<(), SealRefused> {
    match seal.format {
        FIRST_FORMAT if seal.base != 0 || seal.last || seal.kept_from != 0 => {
            // Not signed in the first format: never taken from one.
            return Err(SealRefused::Malformed(
                "a first-format seal names a base or what the bucket keeps".into(),
            ));
        }
        FIRST_FORMAT | FORMAT => {}
        f if f > FORMAT => return Err(SealRefused::Format(f)),
        f => return Err(SealRefused::Malformed(format!("format {f}"))),
    }
    let sealed = Belongs::of(seal);
    let fits = match (named, sealed) {
        (Named::Bundle(_, Kind::Chain), Belongs::Chain) => !seal.last,
        (Named::Bundle(_, Kind::Member), Belongs::Base { first, .. }) => first <= seal.seq,
        (Named::BaseEnd { first: named }, Belongs::Base { first, last }) => {
            last && first == named && first <= seal.seq
        }
        _ => false,
    };
    if !fits {
        return Err(SealRefused::Misplaced { named, sealed });
    }
    match named {
        Named::Bundle(n, _) if n != seal.seq => Err(SealRefused::Misnamed {
            named: n,
            sealed: seal.seq,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn www() -> BucketUrl {
        BucketUrl::parse("s3://site/www").unwrap()
    }

    fn identity() -> (tempfile::TempDir, Identity) {
        let t = tempfile::tempdir().unwrap();
        crate::tls::keygen(&t.path().join("k")).unwrap();
        let id = crate::tls::load_identity(&t.path().join("k")).unwrap();
        (t, id)
    }

    #[test]
    fn a_seal_opens_for_an_allowed_sender_and_checks_the_zip() {
        let (_t, id) = identity();
        let hash = blake3::hash(b"zip bytes");
        let seal =
            Sealer::new(&id)
                .unwrap()
                .seal(&www(), "cms", (7, 5, 9), &hash, (Belongs::Chain, 0));
        let bytes = serde_json::to_vec(&seal).unwrap();
        let sealed = open(
            &bytes,
            &www(),
            Named::Bundle(7, Kind::Chain),
            &[id.fingerprint],
        )
        .unwrap();
        assert_eq!(
            (sealed.fingerprint, sealed.sender.as_str()),
            (id.fingerprint, "cms")
        );
        assert_eq!((sealed.seq, sealed.prev), (7, 5));
        assert_eq!(sealed.check_zip(9, &hash), Ok(()));
        let other = blake3::hash(b"zip bytes, changed");
        assert!(sealed.check_zip(9, &other).is_err());
        assert!(sealed.check_zip(10, &hash).is_err());
    }

    /// A seal of `id`'s, and how it opens for `id` stored under `prefix`
    /// as bundle `named`.
    fn sealed_by(
        id: &Identity,
    ) -> (
        Seal,
        impl Fn(&Seal, &str, u64) -> Result<Sealed, SealRefused>,
    ) {
        let hash = blake3::hash(b"zip bytes");
        let seal =
            Sealer::new(id)
                .unwrap()
                .seal(&www(), "cms", (7, 5, 9), &hash, (Belongs::Chain, 0));
        let allowed = [id.fingerprint];
        let open_it = move |s: &Seal, prefix: &str, named: u64| {
            let url = BucketUrl::parse(&format!("s3://site/{prefix}")).unwrap();
            open(
                &serde_json::to_vec(s).unwrap(),
                &url,
                Named::Bundle(named, Kind::Chain),
                &allowed,
            )
        };
        (seal, open_it)
    }

    #[test]
    fn a_seal_altered_or_moved_is_refused() {
        let (_t, id) = identity();
        let (seal, open_it) = sealed_by(&id);
        // Each field a receiver acts on is covered by the signature.
        let mut bigger = seal.clone();
        bigger.size = 10;
        assert_eq!(
            open_it(&bigger, "www", 7),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
        let mut rehashed = seal.clone();
        rehashed.hash = blake3::hash(b"other").to_hex().to_string();
        assert_eq!(
            open_it(&rehashed, "www", 7),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
        let mut reordered = seal.clone();
        reordered.prev = 6;
        assert_eq!(
            open_it(&reordered, "www", 7),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
        let mut renumbered = seal.clone();
        renumbered.seq = 8;
        assert_eq!(
            open_it(&renumbered, "www", 8),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
        let mut relabelled = seal.clone();
        relabelled.sender = "cms\n7".into();
        assert_eq!(
            open_it(&relabelled, "www", 7),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
        // Stored under another name or another site's prefix.
        assert_eq!(
            open_it(&seal, "www", 8),
            Err(SealRefused::Misnamed {
                named: 8,
                sealed: 7
            })
        );
        assert_eq!(
            open_it(&seal, "shop", 7),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
        let other_bucket = BucketUrl::parse("s3://elsewhere/www").unwrap();
        assert_eq!(
            open(
                &serde_json::to_vec(&seal).unwrap(),
                &other_bucket,
                Named::Bundle(7, Kind::Chain),
                &[id.fingerprint]
            ),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
    }

    #[test]
    fn a_seal_made_by_a_stranger_or_not_a_seal_is_refused() {
        let (_t, id) = identity();
        let (_u, stranger) = identity();
        let hash = blake3::hash(b"zip bytes");
        let (seal, open_it) = sealed_by(&id);
        let allowed = [id.fingerprint];
        // A stranger's seal, and a stranger's signature under our certificate.
        let theirs = Sealer::new(&stranger).unwrap().seal(
            &www(),
            "cms",
            (7, 5, 9),
            &hash,
            (Belongs::Chain, 0),
        );
        assert_eq!(
            open_it(&theirs, "www", 7),
            Err(SealRefused::UnknownSender(stranger.fingerprint))
        );
        let mut forged = theirs;
        forged.cert = seal.cert.clone();
        assert_eq!(
            open_it(&forged, "www", 7),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
        // Not a seal at all, or one from a newer shipper.
        assert!(matches!(
            open(b"{", &www(), Named::Bundle(7, Kind::Chain), &allowed),
            Err(SealRefused::Malformed(_))
        ));
        let mut newer = seal.clone();
        newer.format = FORMAT + 1;
        assert_eq!(
            open_it(&newer, "www", 7),
            Err(SealRefused::Format(FORMAT + 1))
        );
        let huge = vec![b' '; MAX_SEAL_BYTES + 1];
        assert!(matches!(
            open(&huge, &www(), Named::Bundle(7, Kind::Chain), &allowed),
            Err(SealRefused::Malformed(_))
        ));
    }

    /// `id`'s seal of bundle `seq`, sealed after `prev`, belonging where
    /// `belongs` says; and how a seal opens for `id` stored as `named`.
    fn seal_as(id: &Identity, (seq, prev): (u64, u64), belongs: Belongs) -> Seal {
        let hash = blake3::hash(b"zip bytes");
        Sealer::new(id)
            .unwrap()
            .seal(&www(), "cms", (seq, prev, 9), &hash, (belongs, 0))
    }

    fn opener(id: &Identity) -> impl Fn(&Seal, Named) -> Result<Sealed, SealRefused> {
        let allowed = [id.fingerprint];
        move |s, named| open(&serde_json::to_vec(s).unwrap(), &www(), named, &allowed)
    }

    const MEMBER: Belongs = Belongs::Base {
        first: 10,
        last: false,
    };

    #[test]
    fn a_base_member_opens_only_as_what_it_is_stored_as() {
        let (_t, id) = identity();
        let open_as = opener(&id);
        let member = seal_as(&id, (12, 11), MEMBER);
        let last = seal_as(
            &id,
            (14, 12),
            Belongs::Base {
                first: 10,
                last: true,
            },
        );
        let chain = seal_as(&id, (13, 9), Belongs::Chain);
        assert_eq!(
            open_as(&member, Named::Bundle(12, Kind::Member)).map(|s| s.belongs),
            Ok(Belongs::Base {
                first: 10,
                last: false
            })
        );
        assert_eq!(
            open_as(&last, Named::BaseEnd { first: 10 }).map(|s| (s.seq, s.belongs)),
            Ok((
                14,
                Belongs::Base {
                    first: 10,
                    last: true
                }
            ))
        );
        // Stored as something else: a member as the chain, the chain as a
        // member, a member that is not the last as an end, an end of
        // another base.
        for (seal, named) in [
            (&member, Named::Bundle(12, Kind::Chain)),
            (&chain, Named::Bundle(13, Kind::Member)),
            (&member, Named::BaseEnd { first: 10 }),
            (&last, Named::BaseEnd { first: 11 }),
        ] {
            assert!(
                matches!(open_as(seal, named), Err(SealRefused::Misplaced { .. })),
                "{named:?}"
            );
        }
    }

    #[test]
    fn where_a_member_belongs_is_signed() {
        let (_t, id) = identity();
        let open_as = opener(&id);
        let member = seal_as(&id, (12, 11), MEMBER);
        // Moved into another base, or made the last, it no longer holds.
        let mut moved = member.clone();
        moved.base = 11;
        assert_eq!(
            open_as(&moved, Named::Bundle(12, Kind::Member)),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
        let mut ended = member.clone();
        ended.last = true;
        assert_eq!(
            open_as(&ended, Named::BaseEnd { first: 10 }),
            Err(SealRefused::BadSignature(id.fingerprint))
        );
        // The first format signed no base: a first-format seal naming one
        // is refused, whatever its signature.
        let mut first = member.clone();
        first.format = FIRST_FORMAT;
        assert!(matches!(
            open_as(&first, Named::Bundle(12, Kind::Member)),
            Err(SealRefused::Malformed(_))
        ));
    }

    #[test]
    fn a_first_format_seal_of_the_chain_still_opens() {
        let (_t, id) = identity();
        let hash = blake3::hash(b"zip bytes");
        let mut seal = Seal {
            format: FIRST_FORMAT,
            sender: "cms".into(),
            seq: 7,
            prev: 5,
            size: 9,
            hash: hash.to_hex().to_string(),
            cert: BASE64.encode(id.cert()),
            signature: String::new(),
            base: 0,
            last: false,
            kept_from: 0,
        };
        // As the first format signed it: no base, no last.
        let msg = format!(
            "shipper-bucket-1\n{}\n\"cms\"\n7\n5\n9\n{}\n",
            www(),
            seal.hash
        );
        let rustls::pki_types::PrivateKeyDer::Pkcs8(pkcs8) = id.key() else {
            panic!("keygen makes PKCS#8")
        };
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .unwrap();
        seal.signature = BASE64.encode(key.sign(&rng, msg.as_bytes()).unwrap().as_ref());
        let mut json = serde_json::to_value(&seal).unwrap();
        let fields = json.as_object_mut().unwrap();
        fields.remove("base");
        fields.remove("last");
        fields.remove("kept_from");
        let bytes = serde_json::to_vec(&json).unwrap();
        let opened = open(
            &bytes,
            &www(),
            Named::Bundle(7, Kind::Chain),
            &[id.fingerprint],
        );
        assert_eq!(opened.map(|s| (s.prev, s.belongs)), Ok((5, Belongs::Chain)));
    }
}
