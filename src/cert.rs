//! OpenSSH user certificates for token keys: the store the agent offers them from.
//!
//! Everything here is plain data and pure functions with the time passed in, so expiry and
//! ordering are tested exactly. Reading the certificate directory lives in [`scan`]; the
//! agent's wire extension in `agent::cert_ext`; the `keytap cert` commands in [`command`].

pub mod command;
pub mod scan;

use std::collections::HashSet;
use std::path::PathBuf;

use ssh_encoding::Encode;
use ssh_key::certificate::CertType;
use ssh_key::public::KeyData;
use ssh_key::Certificate;

/// The largest certificate kept, as a wire blob. Real ones are far smaller (an RSA-16384 CA
/// signing an RSA-16384 key with a few principals is about 6 KiB); the cap keeps the store and
/// the identities answer small however many a client hands over.
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// Certificates kept from `keytap cert add` at once.
pub const MAX_ADDED: usize = 32;
/// Certificates read from the directory (the first ones by file name).
pub const MAX_DIR: usize = 32;

/// Why a certificate cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertError {
    #[error("{name}: not an OpenSSH certificate ({reason}); pass the `*-cert.pub` file that ssh-keygen -s wrote")]
    Corrupt { name: String, reason: String },
    #[error("{name}: is a host certificate; keytap offers user certificates only")]
    HostCertificate { name: String },
    #[error("{name}: certificate {key_id:?} expired at {valid_before} (now {now}); ask the CA for a fresh one")]
    Expired { name: String, key_id: String, valid_before: u64, now: u64 },
    #[error("{name}: certificate {key_id:?} is for key {fingerprint}, which is on no token; sign the public key from `keytap list` instead")]
    NotOnToken { name: String, key_id: String, fingerprint: String },
    #[error("{name}: the certificate is {size} bytes, over keytap's limit of {max} bytes; ask the CA for one with fewer principals or extensions", max = MAX_CERT_BYTES)]
    TooLarge { name: String, size: usize },
    #[error("{name}: the agent already holds {max} added certificates; remove some with `keytap cert remove` first", max = MAX_ADDED)]
    TooMany { name: String },
}

/// Where a certificate came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Handed over with `keytap cert add`; kept in memory until it expires or is removed.
    Added,
    /// Read from the certificate directory; follows the file.
    Dir(PathBuf),
}

/// One certificate the agent holds.
#[derive(Clone, Debug)]
pub struct Entry {
    pub cert: Certificate,
    /// The certificate's wire blob: identity comparisons use it (the comment is not part of it).
    pub blob: Vec<u8>,
    pub source: Source,
    /// What to call it in messages: the file it came from.
    pub name: String,
}

impl Entry {
    pub fn new(cert: Certificate, source: Source, name: impl Into<String>) -> Entry {
        let blob = cert.to_bytes().expect("encoding a decoded certificate cannot fail");
        Entry { cert, blob, source, name: name.into() }
    }

    pub fn key(&self) -> &KeyData {
        self.cert.public_key()
    }

    /// The comment `ssh-add -l` shows.
    pub fn comment(&self) -> String {
        format!("keytap cert {} ({})", self.cert.key_id(), self.name)
    }
}

/// Where a certificate stands at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    NotYetValid,
    Valid,
    Expired,
}

impl Validity {
    pub fn as_str(self) -> &'static str {
        match self {
            Validity::NotYetValid => "not yet valid",
            Validity::Valid => "valid",
            Validity::Expired => "expired",
        }
    }
}

/// As sshd judges it: valid from `valid_after` (inclusive) until `valid_before` (exclusive).
pub fn validity(cert: &Certificate, now: u64) -> Validity {
    if now < cert.valid_after() {
        Validity::NotYetValid
    } else if now >= cert.valid_before() {
        Validity::Expired
    } else {
        Validity::Valid
    }
}

/// Parse one `*-cert.pub` file's text. The CA signature must verify: a damaged certificate
/// would only be rejected by the server later, with no hint why.
pub fn parse(text: &str, name: &str) -> Result<Certificate, CertError> {
    let corrupt = |reason: String| CertError::Corrupt { name: name.to_string(), reason };
    let line = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or("");
    if line.is_empty() {
        return Err(corrupt("the file is empty".into()));
    }
    // Base64 takes 4 characters per 3 bytes; refuse an oversized one before decoding it.
    if line.len() > MAX_CERT_BYTES / 3 * 4 + 1024 {
        return Err(CertError::TooLarge { name: name.to_string(), size: line.len() / 4 * 3 });
    }
    let cert = Certificate::from_openssh(line).map_err(|e| corrupt(e.to_string()))?;
    check_decoded(&cert, name)?;
    Ok(cert)
}

/// Parse a certificate's wire blob (as `keytap cert add` sends it to the agent).
pub fn from_blob(blob: &[u8], name: &str) -> Result<Certificate, CertError> {
    if blob.len() > MAX_CERT_BYTES {
        return Err(CertError::TooLarge { name: name.into(), size: blob.len() });
    }
    let cert = Certificate::from_bytes(blob).map_err(|e| CertError::Corrupt { name: name.into(), reason: e.to_string() })?;
    check_decoded(&cert, name)?;
    Ok(cert)
}

fn check_decoded(cert: &Certificate, name: &str) -> Result<(), CertError> {
    let size = cert.encoded_len().unwrap_or(usize::MAX);
    if size > MAX_CERT_BYTES {
        return Err(CertError::TooLarge { name: name.into(), size });
    }
    cert.verify_signature().map_err(|e| CertError::Corrupt {
        name: name.into(),
        reason: format!("the CA signature does not verify: {e}"),
    })?;
    if cert.cert_type() != CertType::User {
        return Err(CertError::HostCertificate { name: name.into() });
    }
    Ok(())
}

/// Can this certificate be taken now? Not expired and for a key on a token. A certificate
/// that is not yet valid is accepted: it will be offered once its time comes.
pub fn check_usable(cert: &Certificate, name: &str, now: u64, keys: &[KeyData]) -> Result<(), CertError> {
    if validity(cert, now) == Validity::Expired {
        return Err(CertError::Expired {
            name: name.into(),
            key_id: cert.key_id().into(),
            valid_before: cert.valid_before(),
            now,
        });
    }
    if !keys.contains(cert.public_key()) {
        return Err(CertError::NotOnToken {
            name: name.into(),
            key_id: cert.key_id().into(),
            fingerprint: cert.public_key().fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        });
    }
    Ok(())
}

/// What `keytap cert remove` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Exactly this certificate (by its blob).
    Blob(Vec<u8>),
    /// Every certificate with this key id.
    KeyId(String),
}

impl Selector {
    fn matches(&self, e: &Entry) -> bool {
        match self {
            Selector::Blob(b) => &e.blob == b,
            Selector::KeyId(id) => e.cert.key_id() == id,
        }
    }
}

/// The agent's certificates: those added over the socket and those read from the directory.
#[derive(Clone, Debug, Default)]
pub struct CertStore {
    added: Vec<Entry>,
    from_dir: Vec<Entry>,
}

impl CertStore {
    /// Add a certificate after [`check_usable`]; adding the same one again replaces it.
    /// Returns whether it was new.
    /// At most [`MAX_ADDED`] are kept: one more is refused ([`CertError::TooMany`]).
    pub fn add(&mut self, entry: Entry, now: u64, keys: &[KeyData]) -> Result<bool, CertError> {
        check_usable(&entry.cert, &entry.name, now, keys)?;
        if entry.blob.len() > MAX_CERT_BYTES {
            return Err(CertError::TooLarge { name: entry.name, size: entry.blob.len() });
        }
        let before = self.added.len();
        self.added.retain(|e| e.blob != entry.blob);
        let new = self.added.len() == before;
        if new && self.added.len() >= MAX_ADDED {
            return Err(CertError::TooMany { name: entry.name });
        }
        self.added.push(entry);
        Ok(new)
    }

    /// Remove added certificates matching `selector`; returns how many. Directory
    /// certificates follow their files and are not removed here (see [`CertStore::dir_matches`]).
    pub fn remove(&mut self, selector: &Selector) -> usize {
        let before = self.added.len();
        self.added.retain(|e| !selector.matches(e));
        before - self.added.len()
    }

    /// Directory certificates that match `selector` (to tell the user to delete the file).
    pub fn dir_matches(&self, selector: &Selector) -> Vec<&Entry> {
        self.from_dir.iter().filter(|e| selector.matches(e)).collect()
    }

    /// Replace the directory's certificates with a fresh scan (at most [`MAX_DIR`]; the scan
    /// reports any beyond that).
    pub fn set_dir_entries(&mut self, mut entries: Vec<Entry>) {
        entries.truncate(MAX_DIR);
        self.from_dir = entries;
    }

    /// Forget added certificates that have expired: they can never be offered again.
    pub fn prune_expired(&mut self, now: u64) -> Vec<Entry> {
        let (expired, kept) = std::mem::take(&mut self.added).into_iter().partition(|e| validity(&e.cert, now) == Validity::Expired);
        self.added = kept;
        expired
    }

    /// Every certificate, added first.
    pub fn all(&self) -> impl Iterator<Item = &Entry> {
        self.added.iter().chain(self.from_dir.iter())
    }

    /// The certificates to offer at `now`: valid now and for a key on a token, newest
    /// `valid_before` first (the one that lasts longest is the one ssh should try), each blob once.
    pub fn offerable(&self, now: u64, keys: &[KeyData]) -> Vec<&Entry> {
        let mut seen: HashSet<&[u8]> = HashSet::new();
        let mut out: Vec<&Entry> = Vec::new();
        for e in self.all() {
            if validity(&e.cert, now) == Validity::Valid && keys.contains(e.key()) && seen.insert(&e.blob) {
                out.push(e);
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.cert.valid_before()));
        out
    }

    /// The known certificate with this blob, if it may sign at `now`. Only certificates the
    /// agent offers can sign: a blob it never listed, or one that expired, is refused.
    pub fn signable(&self, blob: &[u8], now: u64, keys: &[KeyData]) -> Option<&Entry> {
        self.offerable(now, keys).into_iter().find(|e| e.blob == blob)
    }
}

/// One identity in the order the agent lists them.
#[derive(Clone, Debug)]
pub enum Offer<'a> {
    Cert(&'a Entry),
    Key(&'a KeyData),
}

impl PartialEq for Offer<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Offer::Cert(a), Offer::Cert(b)) => a.blob == b.blob,
            (Offer::Key(a), Offer::Key(b)) => a == b,
            _ => false,
        }
    }
}

impl Offer<'_> {
    /// Bytes this identity takes in an IDENTITIES_ANSWER: the key or certificate blob and the
    /// comment, each a length-prefixed string.
    pub fn wire_len(&self, comment: &str) -> usize {
        let blob = match self {
            Offer::Cert(e) => e.blob.len(),
            Offer::Key(k) => k.encoded_len().unwrap_or(usize::MAX / 4),
        };
        8 + blob + comment.len()
    }
}

/// The identities to list: certificates first (ssh tries identities in order, and a server
/// that wants a certificate counts every plain key tried before it), then plain keys. With
/// `certs_only`, a key that has a valid certificate is not listed on its own.
pub fn plan<'a>(keys: &'a [KeyData], offerable: &[&'a Entry], certs_only: bool) -> Vec<Offer<'a>> {
    let mut out: Vec<Offer<'a>> = offerable.iter().map(|e| Offer::Cert(e)).collect();
    let covered: HashSet<&KeyData> = offerable.iter().map(|e| e.key()).collect();
    for k in keys {
        if certs_only && covered.contains(k) {
            continue;
        }
        out.push(Offer::Key(k));
    }
    out
}

/// Fit planned identities into an answer of at most `budget` bytes (the frame limit less the
/// answer's header). Plain keys come first when room is short: a listing without a
/// certificate still logs in where the key alone is enough, one that fails does not. Returns
/// the identities kept, in the planned order, and the certificates left out.
pub fn fit<'a>(planned: Vec<(Offer<'a>, String)>, budget: usize) -> (Vec<(Offer<'a>, String)>, Vec<&'a Entry>) {
    let mut room = budget;
    let mut keep = vec![false; planned.len()];
    for pass_keys in [true, false] {
        for (i, (offer, comment)) in planned.iter().enumerate() {
            if matches!(offer, Offer::Key(_)) != pass_keys {
                continue;
            }
            let len = offer.wire_len(comment);
            if len <= room {
                room -= len;
                keep[i] = true;
            }
        }
    }
    let mut kept = Vec::new();
    let mut left_out = Vec::new();
    for ((offer, comment), keep) in planned.into_iter().zip(keep) {
        match (keep, &offer) {
            (true, _) => kept.push((offer, comment)),
            (false, Offer::Cert(e)) => left_out.push(*e),
            (false, Offer::Key(_)) => {}
        }
    }
    (kept, left_out)
}

/// Seconds since the epoch, for the callers that pass time in.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod testutil {
    use ssh_key::certificate::{Builder, CertType};
    use ssh_key::public::KeyData;
    use ssh_key::{Algorithm, Certificate, PrivateKey};

    pub fn key() -> PrivateKey {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    /// A user certificate for `subject` valid [after, before), signed by `ca`.
    pub fn cert(ca: &PrivateKey, subject: &KeyData, id: &str, after: u64, before: u64, kind: CertType) -> Certificate {
        let mut b = Builder::new_with_random_nonce(&mut rand_core::OsRng, subject.clone(), after, before).unwrap();
        b.serial(7).unwrap().key_id(id).unwrap().cert_type(kind).unwrap().valid_principal("root").unwrap();
        b.comment("test cert").unwrap();
        b.sign(ca).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    fn entry(c: Certificate) -> Entry {
        Entry::new(c, Source::Added, "test-cert.pub")
    }

    struct Fixture {
        ca: ssh_key::PrivateKey,
        on_token: KeyData,
        other: KeyData,
    }

    fn fixture() -> Fixture {
        Fixture { ca: key(), on_token: key().public_key().key_data().clone(), other: key().public_key().key_data().clone() }
    }

    #[test]
    fn validity_window_is_after_inclusive_before_exclusive() {
        let f = fixture();
        let c = cert(&f.ca, &f.on_token, "id", 100, 200, CertType::User);
        assert_eq!(validity(&c, 99), Validity::NotYetValid);
        assert_eq!(validity(&c, 100), Validity::Valid);
        assert_eq!(validity(&c, 199), Validity::Valid);
        assert_eq!(validity(&c, 200), Validity::Expired);
        assert_eq!(validity(&c, u64::MAX), Validity::Expired);
    }

    #[test]
    fn parse_round_trips_and_names_the_file_on_garbage() {
        let f = fixture();
        let c = cert(&f.ca, &f.on_token, "id", 100, 200, CertType::User);
        let text = format!("# a comment\n\n{}\n", c.to_openssh().unwrap());
        assert_eq!(parse(&text, "x-cert.pub").unwrap().to_bytes().unwrap(), c.to_bytes().unwrap());
        for bad in ["", "\n\n", "ssh-ed25519-cert-v01@openssh.com AAAAnotbase64!!", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA== plain"] {
            match parse(bad, "bad-cert.pub") {
                Err(CertError::Corrupt { name, .. }) => assert_eq!(name, "bad-cert.pub"),
                other => panic!("{bad:?} parsed: {other:?}"),
            }
        }
        // A plain public key is not a certificate.
        let plain = key().public_key().to_openssh().unwrap();
        assert!(matches!(parse(&plain, "k.pub"), Err(CertError::Corrupt { .. })));
    }

    #[test]
    fn tampered_certificate_fails_the_signature_check() {
        let f = fixture();
        let c = cert(&f.ca, &f.on_token, "id", 100, 200, CertType::User);
        let mut blob = c.to_bytes().unwrap();
        // Flip a byte in the key id region (past the type string and nonce); the blob still
        // decodes but the CA signature no longer matches.
        let pos = blob.windows(2).position(|w| w == b"id").unwrap();
        blob[pos] = b'X';
        let err = from_blob(&blob, "t-cert.pub").unwrap_err();
        assert!(matches!(&err, CertError::Corrupt { reason, .. } if reason.contains("signature")), "{err}");
    }

    #[test]
    fn host_certificates_are_refused() {
        let f = fixture();
        let c = cert(&f.ca, &f.on_token, "id", 100, 200, CertType::Host);
        let err = parse(&c.to_openssh().unwrap(), "host-cert.pub").unwrap_err();
        assert_eq!(err, CertError::HostCertificate { name: "host-cert.pub".into() });
    }

    #[test]
    fn add_refuses_expired_and_foreign_certificates() {
        let f = fixture();
        let keys = vec![f.on_token.clone()];
        let mut store = CertStore::default();
        let expired = cert(&f.ca, &f.on_token, "old", 100, 200, CertType::User);
        let err = store.add(entry(expired), 200, &keys).unwrap_err();
        assert!(matches!(err, CertError::Expired { valid_before: 200, now: 200, .. }), "{err}");
        assert!(err.to_string().contains("expired"));
        let foreign = cert(&f.ca, &f.other, "foreign", 100, 300, CertType::User);
        let err = store.add(entry(foreign), 150, &keys).unwrap_err();
        assert!(err.to_string().contains("on no token"), "{err}");
        assert_eq!(store.all().count(), 0);
        // Not yet valid is fine: it is kept and offered later.
        let future = cert(&f.ca, &f.on_token, "future", 500, 600, CertType::User);
        assert!(store.add(entry(future), 150, &keys).unwrap());
        assert!(store.offerable(150, &keys).is_empty());
        assert_eq!(store.offerable(500, &keys).len(), 1);
    }

    #[test]
    fn adding_the_same_certificate_twice_keeps_one() {
        let f = fixture();
        let keys = vec![f.on_token.clone()];
        let c = cert(&f.ca, &f.on_token, "id", 100, 200, CertType::User);
        let mut store = CertStore::default();
        assert!(store.add(entry(c.clone()), 150, &keys).unwrap());
        assert!(!store.add(entry(c), 150, &keys).unwrap());
        assert_eq!(store.all().count(), 1);
    }

    #[test]
    fn offerable_follows_time_exactly() {
        let f = fixture();
        let keys = vec![f.on_token.clone()];
        let mut store = CertStore::default();
        store.add(entry(cert(&f.ca, &f.on_token, "short", 100, 200, CertType::User)), 100, &keys).unwrap();
        store.add(entry(cert(&f.ca, &f.on_token, "long", 150, 400, CertType::User)), 100, &keys).unwrap();
        let ids = |now| store.offerable(now, &keys).iter().map(|e| e.cert.key_id().to_string()).collect::<Vec<_>>();
        assert_eq!(ids(99), Vec::<String>::new());
        assert_eq!(ids(100), vec!["short"]);
        assert_eq!(ids(150), vec!["long", "short"], "longest-lasting first");
        assert_eq!(ids(199), vec!["long", "short"]);
        assert_eq!(ids(200), vec!["long"], "gone the second it expires");
        assert_eq!(ids(400), Vec::<String>::new());
    }

    #[test]
    fn certificates_whose_key_left_the_token_are_not_offered() {
        let f = fixture();
        let mut store = CertStore::default();
        store.add(entry(cert(&f.ca, &f.on_token, "id", 100, 200, CertType::User)), 100, std::slice::from_ref(&f.on_token)).unwrap();
        assert!(store.offerable(150, std::slice::from_ref(&f.other)).is_empty());
        assert!(store.offerable(150, &[]).is_empty());
    }

    #[test]
    fn signable_only_for_known_valid_blobs() {
        let f = fixture();
        let keys = vec![f.on_token.clone()];
        let known = cert(&f.ca, &f.on_token, "id", 100, 200, CertType::User);
        let unknown = cert(&f.ca, &f.on_token, "id", 100, 200, CertType::User);
        let mut store = CertStore::default();
        store.add(entry(known.clone()), 100, &keys).unwrap();
        let kb = known.to_bytes().unwrap();
        assert!(store.signable(&kb, 150, &keys).is_some());
        assert!(store.signable(&unknown.to_bytes().unwrap(), 150, &keys).is_none(), "same key, different nonce: not known");
        assert!(store.signable(&kb, 200, &keys).is_none(), "expired");
        assert!(store.signable(&kb, 99, &keys).is_none(), "not yet valid");
        assert!(store.signable(&kb, 150, &[]).is_none(), "key gone from the token");
    }

    #[test]
    fn remove_by_blob_or_key_id_and_directory_entries_stay() {
        let f = fixture();
        let keys = vec![f.on_token.clone()];
        let a = cert(&f.ca, &f.on_token, "a", 100, 200, CertType::User);
        let b = cert(&f.ca, &f.on_token, "b", 100, 200, CertType::User);
        let mut store = CertStore::default();
        store.add(entry(a.clone()), 100, &keys).unwrap();
        store.add(entry(b.clone()), 100, &keys).unwrap();
        store.set_dir_entries(vec![Entry::new(b.clone(), Source::Dir("/d/b-cert.pub".into()), "/d/b-cert.pub")]);
        assert_eq!(store.remove(&Selector::Blob(a.to_bytes().unwrap())), 1);
        assert_eq!(store.remove(&Selector::Blob(a.to_bytes().unwrap())), 0);
        assert_eq!(store.remove(&Selector::KeyId("b".into())), 1);
        assert_eq!(store.remove(&Selector::KeyId("nope".into())), 0);
        assert_eq!(store.dir_matches(&Selector::KeyId("b".into())).len(), 1);
        assert_eq!(store.offerable(150, &keys).len(), 1, "the directory copy is still offered");
    }

    #[test]
    fn the_same_certificate_from_socket_and_directory_is_offered_once() {
        let f = fixture();
        let keys = vec![f.on_token.clone()];
        let c = cert(&f.ca, &f.on_token, "a", 100, 200, CertType::User);
        let mut store = CertStore::default();
        store.add(entry(c.clone()), 100, &keys).unwrap();
        store.set_dir_entries(vec![Entry::new(c, Source::Dir("/d/a-cert.pub".into()), "/d/a-cert.pub")]);
        assert_eq!(store.offerable(150, &keys).len(), 1);
    }

    #[test]
    fn prune_drops_only_expired_added_certificates() {
        let f = fixture();
        let keys = vec![f.on_token.clone()];
        let mut store = CertStore::default();
        store.add(entry(cert(&f.ca, &f.on_token, "a", 100, 200, CertType::User)), 100, &keys).unwrap();
        store.add(entry(cert(&f.ca, &f.on_token, "b", 100, 300, CertType::User)), 100, &keys).unwrap();
        assert!(store.prune_expired(199).is_empty());
        let gone = store.prune_expired(200);
        assert_eq!(gone.iter().map(|e| e.cert.key_id()).collect::<Vec<_>>(), vec!["a"]);
        assert_eq!(store.all().count(), 1);
    }

    fn big_cert(f: &Fixture, id: &str, principals: usize) -> Certificate {
        let mut b = ssh_key::certificate::Builder::new_with_random_nonce(&mut rand_core::OsRng, f.on_token.clone(), 100, 200).unwrap();
        b.key_id(id).unwrap().cert_type(CertType::User).unwrap();
        for i in 0..principals {
            b.valid_principal(format!("principal-number-{i:05}-padded-out-to-sixty-four-bytes-or-so-xxxxxxx")).unwrap();
        }
        b.sign(&f.ca).unwrap()
    }

    #[test]
    fn oversized_certificates_are_refused_before_they_are_kept() {
        let f = fixture();
        let huge = big_cert(&f, "huge", 400);
        let blob = huge.to_bytes().unwrap();
        assert!(blob.len() > MAX_CERT_BYTES);
        assert!(matches!(from_blob(&blob, "h-cert.pub"), Err(CertError::TooLarge { .. })));
        let err = parse(&huge.to_openssh().unwrap(), "h-cert.pub").unwrap_err();
        assert!(err.to_string().contains("over keytap's limit"), "{err}");
        let fits = big_cert(&f, "fits", 100);
        assert!(from_blob(&fits.to_bytes().unwrap(), "f-cert.pub").is_ok());
    }

    #[test]
    fn the_store_holds_a_bounded_number_of_certificates() {
        let f = fixture();
        let keys = vec![f.on_token.clone()];
        let mut store = CertStore::default();
        let certs: Vec<Certificate> = (0..=MAX_ADDED).map(|i| cert(&f.ca, &f.on_token, &format!("c{i}"), 100, 200, CertType::User)).collect();
        for c in &certs[..MAX_ADDED] {
            assert!(store.add(entry(c.clone()), 150, &keys).unwrap());
        }
        let err = store.add(entry(certs[MAX_ADDED].clone()), 150, &keys).unwrap_err();
        assert!(err.to_string().contains("keytap cert remove"), "{err}");
        // The same one again is a replacement, not one more.
        assert!(!store.add(entry(certs[0].clone()), 150, &keys).unwrap());
        let dir: Vec<Entry> = certs.iter().map(|c| Entry::new(c.clone(), Source::Dir("/d".into()), "/d")).collect();
        store.set_dir_entries(dir);
        assert_eq!(store.all().count(), MAX_ADDED + MAX_DIR);
        // Offered once each although every one is both added and in the directory.
        assert_eq!(store.offerable(150, &keys).len(), MAX_ADDED);
    }

    #[test]
    fn fit_keeps_keys_and_leaves_out_certificates_that_do_not_fit() {
        let f = fixture();
        let keys = vec![f.on_token.clone(), f.other.clone()];
        let mut store = CertStore::default();
        for i in 0..3 {
            store.add(entry(big_cert(&f, &format!("b{i}"), 100)), 100, &keys).unwrap();
        }
        let offer = store.offerable(150, &keys);
        let planned: Vec<(Offer, String)> = plan(&keys, &offer, false).into_iter().map(|o| (o, "comment".to_string())).collect();
        let total: usize = planned.iter().map(|(o, c)| o.wire_len(c)).sum();
        let one_cert = planned[0].0.wire_len("comment");
        // Room for the keys and one certificate only.
        let (kept, left_out) = fit(planned.clone(), total - 2 * one_cert);
        assert_eq!(left_out.len(), 2);
        assert_eq!(kept.len(), 3);
        assert!(matches!(kept[0].0, Offer::Cert(_)) && matches!(kept[2].0, Offer::Key(_)), "order kept");
        let (kept, left_out) = fit(planned, total);
        assert_eq!((kept.len(), left_out.len()), (5, 0));
    }

    #[test]
    fn plan_lists_certificates_before_keys_and_certs_only_hides_covered_keys() {
        let f = fixture();
        let keys = vec![f.on_token.clone(), f.other.clone()];
        let mut store = CertStore::default();
        store.add(entry(cert(&f.ca, &f.on_token, "a", 100, 200, CertType::User)), 100, &keys).unwrap();
        let offer = store.offerable(150, &keys);
        assert_eq!(plan(&keys, &offer, false), vec![Offer::Cert(offer[0]), Offer::Key(&keys[0]), Offer::Key(&keys[1])]);
        assert_eq!(plan(&keys, &offer, true), vec![Offer::Cert(offer[0]), Offer::Key(&keys[1])]);
        // Once the certificate expires, certs-only shows the plain key again.
        let later = store.offerable(200, &keys);
        assert_eq!(plan(&keys, &later, true), vec![Offer::Key(&keys[0]), Offer::Key(&keys[1])]);
    }
}
