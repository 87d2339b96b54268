//! `attest::verify_proof` on proofs from mock tokens: every accept/deny case, each for the
//! right reason, plus an independent parse of the attestation certificate with Python's
//! `cryptography` (a second X.509 implementation).

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use der::Encode;
use keytap::attest::prove::{prove_with_owner, ProveError, ProveRequest};
use keytap::attest::{verify_proof, AttestError, Proof, VerifyOptions, WorkerIdentity};
use keytap::prompt::{PinRequest, PromptError, Prompter};
use keytap::token::mock::{InitOptions, MockToken};
use keytap::token::owner::Owner;
use keytap::token::{Pin, PinPolicy, Slot, Token, TokenError, TouchPolicy};
use x509_cert::Certificate;

const NONCE: &str = "nonce-7f3a";

struct FixedPin;
impl Prompter for FixedPin {
    fn pin(&self, _: &PinRequest) -> Result<Option<Pin>, PromptError> {
        Ok(Some(zeroize::Zeroizing::new("123456".into())))
    }
    fn confirm(&self, _: &str) -> bool {
        false
    }
    fn notify(&self, _: &str) {}
}

struct Mock {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    serial: u32,
}

fn new_mock(serial: u32) -> Mock {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mock");
    MockToken::init(&path, &InitOptions { force: false, serial: Some(serial) }).unwrap();
    Mock { _dir: dir, path, serial }
}

/// Token A (the worker's) and token B (another device), shared read-only by the tests.
fn tokens() -> &'static (Mock, Mock) {
    static TOKENS: OnceLock<(Mock, Mock)> = OnceLock::new();
    TOKENS.get_or_init(|| (new_mock(11_111_111), new_mock(22_222_222)))
}

fn worker() -> WorkerIdentity {
    WorkerIdentity { worker_pool: "proj-releng/linux-signing".into(), worker_group: "mdc1".into(), worker_id: "signer-07".into() }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The mock token saves its state through one fixed temp file name: one writer at a time.
static STATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn prove_at(dir: &Path, slot: Slot, timestamp: u64) -> Result<Proof, ProveError> {
    let _guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let token: Box<dyn Token> = Box::new(MockToken::open(dir).unwrap());
    let mut owner = Owner::new(token, Arc::new(FixedPin));
    let request = ProveRequest { slot, serial: None, nonce: NONCE.into(), worker: worker(), timestamp: Some(timestamp) };
    prove_with_owner(&mut owner, &request)
}

fn prove(dir: &Path, slot: Slot) -> Proof {
    prove_at(dir, slot, now()).unwrap()
}

fn root_der(dir: &Path) -> Vec<u8> {
    let pem = std::fs::read(dir.join("attestation-root.pem")).unwrap();
    let certs = Certificate::load_pem_chain(&pem).unwrap();
    assert_eq!(certs.len(), 1);
    certs[0].to_der().unwrap()
}

fn options(roots: Vec<Vec<u8>>) -> VerifyOptions {
    VerifyOptions::new(roots, NONCE)
}

fn json(proof: &Proof) -> Vec<u8> {
    serde_json::to_vec(proof).unwrap()
}

fn b64d(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn b64e(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn valid_proofs_for_every_key_type_verify() {
    let (a, _) = tokens();
    for (slot, alg, pin, touch) in [
        (Slot(0x9a), "p256", PinPolicy::Once, TouchPolicy::Cached),
        (Slot(0x9c), "ed25519", PinPolicy::Always, TouchPolicy::Always),
        (Slot(0x9d), "p384", PinPolicy::Once, TouchPolicy::Never),
        (Slot(0x9e), "rsa2048", PinPolicy::Never, TouchPolicy::Never),
    ] {
        let proof = prove(&a.path, slot);
        let mut opts = options(vec![root_der(&a.path)]);
        opts.allow_serials = Some(vec![a.serial]);
        opts.expect_worker_pool = Some(worker().worker_pool);
        opts.expect_worker_group = Some(worker().worker_group);
        opts.expect_worker_id = Some(worker().worker_id);
        let claims = verify_proof(&json(&proof), &opts).unwrap_or_else(|e| panic!("slot {slot}: {e}"));
        assert_eq!(claims.serial, a.serial);
        assert_eq!(claims.slot, slot.to_string());
        assert_eq!(claims.key_algorithm.to_string(), alg);
        assert_eq!((claims.pin_policy, claims.touch_policy), (pin, touch));
        assert_eq!(claims.firmware, "5.4.3");
        assert_eq!(claims.worker_id, "signer-07");
        assert_eq!(claims.chain.last().unwrap(), "CN=keytap MOCK Attestation Root (TEST)");
        // The attested key is the one the token lists for that slot.
        let listed = MockToken::open(&a.path).unwrap().keys().unwrap().into_iter().find(|k| k.slot == slot).unwrap();
        assert_eq!(claims.fingerprint, listed.fingerprint());
    }
}

#[test]
fn untrusted_root_is_refused() {
    let (a, b) = tokens();
    let proof = prove(&a.path, Slot(0x9a));
    let err = verify_proof(&json(&proof), &options(vec![root_der(&b.path)])).unwrap_err();
    assert!(matches!(err, AttestError::UntrustedChain(_)), "{err:?}");
    let err = verify_proof(&json(&proof), &options(vec![])).unwrap_err();
    assert_eq!(err, AttestError::NoRoots);
}

/// Byte offset of a Yubico extension's value inside the certificate DER.
fn extension_value_offset(der: &[u8], last_arc: u8, value_len: usize) -> usize {
    // OID 1.3.6.1.4.1.41482.3.N, then OCTET STRING of value_len.
    let mut pattern = vec![0x06, 0x0a, 0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xc4, 0x0a, 0x03, last_arc, 0x04, value_len as u8];
    let at = der.windows(pattern.len()).position(|w| w == pattern.as_slice()).expect("extension present");
    pattern.clear();
    at + 14
}

#[test]
fn tampered_attestation_certificate_is_refused() {
    let (a, _) = tokens();
    let mut proof = prove(&a.path, Slot(0x9a));
    let mut der = b64d(&proof.attestation_certificate);
    // Claim PIN policy "always" (03) instead of "once" (02).
    let at = extension_value_offset(&der, 0x08, 2);
    assert_eq!(der[at], 0x02);
    der[at] = 0x03;
    proof.attestation_certificate = b64e(&der);
    proof.pin_policy = PinPolicy::Always;
    let mut opts = options(vec![root_der(&a.path)]);
    opts.require_pin = Some(PinPolicy::Always);
    let err = verify_proof(&json(&proof), &opts).unwrap_err();
    assert!(matches!(err, AttestError::NotIssuedByIntermediate(ref m) if m.contains("signature check failed")), "{err:?}");
}

#[test]
fn f9_certificate_from_another_device_is_refused() {
    let (a, b) = tokens();
    let mut proof = prove(&a.path, Slot(0x9a));
    let other_f9 = prove(&b.path, Slot(0x9a)).intermediate_certificate;
    let other_f9 = b64d(&other_f9);
    assert_ne!(b64e(&other_f9), proof.intermediate_certificate);
    proof.intermediate_certificate = b64e(&other_f9);
    // Even trusting both devices' roots (so B's f9 itself chains), the link from the
    // attestation certificate to that f9 is what fails.
    let err = verify_proof(&json(&proof), &options(vec![root_der(&a.path), root_der(&b.path)])).unwrap_err();
    assert!(matches!(err, AttestError::NotIssuedByIntermediate(_)), "{err:?}");
}

#[test]
fn serial_not_in_allow_list_is_refused() {
    let (a, b) = tokens();
    let proof = prove(&a.path, Slot(0x9a));
    let mut opts = options(vec![root_der(&a.path)]);
    opts.allow_serials = Some(vec![b.serial, 1]);
    assert_eq!(verify_proof(&json(&proof), &opts).unwrap_err(), AttestError::SerialNotAllowed(a.serial));
    opts.allow_serials = Some(vec![b.serial, a.serial]);
    assert!(verify_proof(&json(&proof), &opts).is_ok());
}

#[test]
fn weaker_policies_than_required_are_refused() {
    let (a, _) = tokens();
    // 9a: PIN once, touch cached.
    let proof = prove(&a.path, Slot(0x9a));
    let mut opts = options(vec![root_der(&a.path)]);
    opts.require_pin = Some(PinPolicy::Always);
    assert_eq!(
        verify_proof(&json(&proof), &opts).unwrap_err(),
        AttestError::PinPolicyTooWeak { have: PinPolicy::Once, need: PinPolicy::Always }
    );
    opts.require_pin = Some(PinPolicy::Once);
    opts.require_touch = Some(TouchPolicy::Always);
    assert_eq!(
        verify_proof(&json(&proof), &opts).unwrap_err(),
        AttestError::TouchPolicyTooWeak { have: TouchPolicy::Cached, need: TouchPolicy::Always }
    );
    opts.require_touch = Some(TouchPolicy::Cached);
    assert!(verify_proof(&json(&proof), &opts).is_ok());
    // 9e: PIN never fails a PIN "once" requirement.
    let proof = prove(&a.path, Slot(0x9e));
    opts.require_touch = None;
    assert_eq!(
        verify_proof(&json(&proof), &opts).unwrap_err(),
        AttestError::PinPolicyTooWeak { have: PinPolicy::Never, need: PinPolicy::Once }
    );
}

#[test]
fn proof_policy_field_must_match_the_certificate() {
    let (a, _) = tokens();
    let mut proof = prove(&a.path, Slot(0x9a));
    proof.touch_policy = TouchPolicy::Always;
    assert_eq!(
        verify_proof(&json(&proof), &options(vec![root_der(&a.path)])).unwrap_err(),
        AttestError::ClaimMismatch("touch_policy")
    );
}

#[test]
fn wrong_nonce_is_refused() {
    let (a, _) = tokens();
    let proof = prove(&a.path, Slot(0x9a));
    let mut opts = options(vec![root_der(&a.path)]);
    opts.nonce = "a-newer-nonce".into();
    assert_eq!(verify_proof(&json(&proof), &opts).unwrap_err(), AttestError::NonceMismatch);
    // Rewriting the nonce in the document breaks the signature instead.
    let mut edited = proof.clone();
    edited.nonce = "a-newer-nonce".into();
    assert!(matches!(verify_proof(&json(&edited), &opts).unwrap_err(), AttestError::BadSignature(_)));
}

#[test]
fn proofs_older_than_max_age_or_from_the_future_are_refused() {
    let (a, _) = tokens();
    let made = now() - 600;
    let proof = prove_at(&a.path, Slot(0x9a), made).unwrap();
    let mut opts = options(vec![root_der(&a.path)]);
    opts.now = UNIX_EPOCH + Duration::from_secs(made + 600);
    opts.max_age = Duration::from_secs(300);
    assert_eq!(verify_proof(&json(&proof), &opts).unwrap_err(), AttestError::TooOld { age: 600, max: 300 });
    opts.max_age = Duration::from_secs(900);
    assert!(verify_proof(&json(&proof), &opts).is_ok());
    opts.now = UNIX_EPOCH + Duration::from_secs(made - 3600);
    assert_eq!(verify_proof(&json(&proof), &opts).unwrap_err(), AttestError::FromTheFuture { ahead: 3600 });
    // The timestamp is signed: moving it forward breaks the signature.
    let mut edited = proof.clone();
    edited.timestamp = now();
    opts.now = SystemTime::now();
    assert!(matches!(verify_proof(&json(&edited), &opts).unwrap_err(), AttestError::BadSignature(_)));
}

#[test]
fn proof_bound_to_another_worker_is_refused() {
    let (a, _) = tokens();
    let proof = prove(&a.path, Slot(0x9a));
    let mut opts = options(vec![root_der(&a.path)]);
    opts.expect_worker_id = Some("signer-08".into());
    assert_eq!(
        verify_proof(&json(&proof), &opts).unwrap_err(),
        AttestError::BindingMismatch { field: "worker id", expected: "signer-08".into(), got: "signer-07".into() }
    );
    // Relabelling the proof for signer-08 does not help: the binding is signed.
    let mut edited = proof.clone();
    edited.worker_id = "signer-08".into();
    assert!(matches!(verify_proof(&json(&edited), &opts).unwrap_err(), AttestError::BadSignature(_)));
}

#[test]
fn imported_key_cannot_be_attested() {
    let m = new_mock(33_333_333);
    MockToken::open(&m.path).unwrap().set_attestable(Slot(0x9a), false).unwrap();
    let err = prove_at(&m.path, Slot(0x9a), now()).unwrap_err();
    assert!(matches!(err, ProveError::Token(TokenError::NotAttestable(ref m)) if m.contains("imported")), "{err:?}");
    // Other slots on the same token still can.
    assert!(prove_at(&m.path, Slot(0x9e), now()).is_ok());
}

#[test]
fn garbage_is_refused_as_malformed() {
    let (a, _) = tokens();
    let opts = options(vec![root_der(&a.path)]);
    for garbage in [&b"not json"[..], b"{}", b"[1,2]", b"{\"kind\": 7}", &[0xff, 0xfe, 0x00][..]] {
        let err = verify_proof(garbage, &opts).unwrap_err();
        assert!(matches!(err, AttestError::Malformed(_)), "{:?}: {err:?}", String::from_utf8_lossy(garbage));
    }
    let err = verify_proof(br#"{"kind": "staticSecret"}"#, &opts).unwrap_err();
    assert_eq!(err, AttestError::UnsupportedKind("staticSecret".into()));
    let mut proof = prove(&a.path, Slot(0x9a));
    proof.attestation_certificate = "!!!".into();
    assert!(matches!(verify_proof(&json(&proof), &opts).unwrap_err(), AttestError::Malformed(_)));
    proof.attestation_certificate = b64e(b"\x30\x03\x02\x01\x01");
    assert!(matches!(verify_proof(&json(&proof), &opts).unwrap_err(), AttestError::BadCertificate { which: "attestation", .. }));
}

/// A second X.509 implementation (Python `cryptography`) reads the same serial, firmware,
/// policy and form factor bytes, and the Yubico subject/issuer shape.
#[test]
fn attestation_certificate_reads_the_same_in_python_cryptography() {
    let (a, _) = tokens();
    let proof = prove(&a.path, Slot(0x9a));
    let dir = tempfile::tempdir().unwrap();
    let att = dir.path().join("att.der");
    let f9 = dir.path().join("f9.der");
    std::fs::write(&att, b64d(&proof.attestation_certificate)).unwrap();
    std::fs::write(&f9, b64d(&proof.intermediate_certificate)).unwrap();
    let script = r#"
import sys
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
att = x509.load_der_x509_certificate(open(sys.argv[1], 'rb').read())
f9 = x509.load_der_x509_certificate(open(sys.argv[2], 'rb').read())
def ext(n):
    return att.extensions.get_extension_for_oid(ObjectIdentifier('1.3.6.1.4.1.41482.3.' + n)).value.value.hex()
print('subject', att.subject.rfc4514_string())
print('issuer', att.issuer.rfc4514_string())
print('f9subject', f9.subject.rfc4514_string())
print('serialbytes', len(att.serial_number.to_bytes(16, 'big')))
print('firmware', ext('3'))
print('serial', ext('7'))
print('policy', ext('8'))
print('formfactor', ext('9'))
att.verify_directly_issued_by(f9)
print('signed-by-f9 ok')
"#;
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&att).arg(&f9).output().expect("python3 runs");
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let serial_der = format!("0204{:08x}", a.serial); // INTEGER, 4 bytes (11111111 = 0x00a98ac7)
    for line in [
        "subject CN=YubiKey PIV Attestation 9a".to_string(),
        "issuer CN=keytap MOCK PIV Attestation (TEST)".to_string(),
        "f9subject CN=keytap MOCK PIV Attestation (TEST)".to_string(),
        "serialbytes 16".to_string(),
        "firmware 050403".to_string(),
        format!("serial {serial_der}"),
        "policy 0203".to_string(),
        "formfactor 03".to_string(),
        "signed-by-f9 ok".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
    }
}

/// Certificates made by a second implementation (Python `cryptography`) in the shapes of real
/// Yubico chains: an RSA root with pathlen 0 (the U2F root quirk) over an RSA f9 certificate
/// without basicConstraints; and a firmware-5.7.4-like chain EC root -> intermediate -> f9.
/// The attested keys are P-384 (a serial with its top bit set, FIPS form factor) and signed
/// by Python too, so the whole proof comes from outside keytap.
const PY_CHAINS: &str = r#"
import sys, datetime
from cryptography import x509
from cryptography.x509.oid import NameOID, ObjectIdentifier
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa, ec
out = sys.argv[1]
def name(cn): return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
def cert(subject, issuer, pub, key, h, exts=()):
    b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer)).public_key(pub)
         .serial_number(x509.random_serial_number())
         .not_valid_before(datetime.datetime(2016, 3, 14)).not_valid_after(datetime.datetime(2052, 4, 17)))
    for e, crit in exts: b = b.add_extension(e, critical=crit)
    return b.sign(key, h)
def save(n, c): open(f"{out}/{n}.der", "wb").write(c.public_bytes(serialization.Encoding.DER))
def yubico(serial, fw, pin, touch, ff):
    raw = lambda n, v: (x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.41482.3." + n), v), False)
    s = serial.to_bytes(5, "big").lstrip(b"\0")
    if s[0] & 0x80: s = b"\0" + s
    return [raw("3", bytes(fw)), raw("7", b"\x02" + bytes([len(s)]) + s), raw("8", bytes([pin, touch])), raw("9", bytes([ff]))]
# Chain A: U2F-style RSA root (pathlen 0) -> RSA f9 without basicConstraints -> P-384 slot key.
root = rsa.generate_private_key(65537, 2048)
f9 = rsa.generate_private_key(65537, 2048)
slot = ec.generate_private_key(ec.SECP384R1())
save("a-root", cert("Test U2F Root CA Serial 457200631", "Test U2F Root CA Serial 457200631", root.public_key(), root, hashes.SHA256(),
                    [(x509.BasicConstraints(ca=True, path_length=0), True)]))
save("a-f9", cert("Test PIV Attestation", "Test U2F Root CA Serial 457200631", f9.public_key(), root, hashes.SHA256()))
save("a-att", cert("YubiKey PIV Attestation 9c", "Test PIV Attestation", slot.public_key(), f9, hashes.SHA256(),
                   yubico(0x9abcdef0, [5, 7, 4], 3, 2, 0x83)))
open(f"{out}/a-key.pem", "wb").write(slot.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
# Chain B: EC P-384 root -> P-256 intermediate -> RSA f9 -> P-384 slot key.
root2 = ec.generate_private_key(ec.SECP384R1())
inter = ec.generate_private_key(ec.SECP256R1())
f92 = rsa.generate_private_key(65537, 2048)
save("b-root", cert("Test Attestation Root 1", "Test Attestation Root 1", root2.public_key(), root2, hashes.SHA384(),
                    [(x509.BasicConstraints(ca=True, path_length=None), True)]))
save("b-inter", cert("Test PIV Attestation B 1", "Test Attestation Root 1", inter.public_key(), root2, hashes.SHA384(),
                     [(x509.BasicConstraints(ca=True, path_length=None), True)]))
save("b-f9", cert("Test PIV Attestation", "Test PIV Attestation B 1", f92.public_key(), inter, hashes.SHA256()))
save("b-att", cert("YubiKey PIV Attestation 9a", "Test PIV Attestation", slot.public_key(), f92, hashes.SHA256(),
                   yubico(12345678, [5, 7, 4], 2, 1, 0x03)))
# Variants that break one path rule each (same keys, so every signature is genuine).
crit = (x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x05\x00"), True)
save("a-att-crit", cert("YubiKey PIV Attestation 9c", "Test PIV Attestation", slot.public_key(), f9, hashes.SHA256(),
                        yubico(0x9abcdef0, [5, 7, 4], 3, 2, 0x83) + [crit]))
pol3 = [e for e in yubico(0x9abcdef0, [5, 7, 4], 3, 2, 0x83) if e[0].oid.dotted_string != "1.3.6.1.4.1.41482.3.8"]
pol3.append((x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.41482.3.8"), bytes([3, 2, 1])), False))
save("a-att-pol3", cert("YubiKey PIV Attestation 9c", "Test PIV Attestation", slot.public_key(), f9, hashes.SHA256(), pol3))
save("f-f9", cert("Test PIV Attestation", "Test PIV Attestation B 1", f92.public_key(), inter, hashes.SHA256(),
                  [(x509.BasicConstraints(ca=True, path_length=0), True)]))
save("g-f9", cert("Test PIV Attestation", "Test PIV Attestation B 1", f92.public_key(), inter, hashes.SHA256(),
                  [(x509.BasicConstraints(ca=False, path_length=None), True)]))
save("c-inter", cert("Test PIV Attestation B 1", "Test Attestation Root 1", inter.public_key(), root2, hashes.SHA384()))
save("d-root", cert("Test Attestation Root 1", "Test Attestation Root 1", root2.public_key(), root2, hashes.SHA384(),
                    [(x509.BasicConstraints(ca=True, path_length=0), True)]))
ku = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                   key_agreement=False, key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False)
save("e-inter", cert("Test PIV Attestation B 1", "Test Attestation Root 1", inter.public_key(), root2, hashes.SHA384(),
                     [(x509.BasicConstraints(ca=True, path_length=None), True), (ku, True)]))
"#;

const PY_SIGN: &str = r#"
import sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
key = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), None)
sys.stdout.buffer.write(key.sign(open(sys.argv[2], "rb").read(), ec.ECDSA(hashes.SHA384())))
"#;

fn python(args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = std::process::Command::new("python3").args(args).output().expect("python3 runs");
    assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A proof around certificates made elsewhere, signed by Python with the slot key.
fn foreign_proof(dir: &Path, prefix: &str, slot: &str, serial: u32, pin: PinPolicy, touch: TouchPolicy) -> Vec<u8> {
    foreign_proof_with(dir, &format!("{prefix}-att"), prefix, slot, serial, pin, touch)
}

/// `foreign_proof` around the attestation certificate `{att}.der`.
fn foreign_proof_with(dir: &Path, att: &str, prefix: &str, slot: &str, serial: u32, pin: PinPolicy, touch: TouchPolicy) -> Vec<u8> {
    let att = std::fs::read(dir.join(format!("{att}.der"))).unwrap();
    let timestamp = now();
    let message = keytap::attest::canonical_bytes(&keytap::attest::SignedFields {
        nonce: NONCE,
        worker: &worker(),
        timestamp,
        slot,
        serial,
        attestation_der: &att,
    });
    let msg_path = dir.join(format!("{prefix}-message"));
    std::fs::write(&msg_path, &message).unwrap();
    let sig = python(&["-c".as_ref(), PY_SIGN.as_ref(), dir.join("a-key.pem").as_os_str(), msg_path.as_os_str()]);
    // Python leaves S as it falls; the verifier takes only the low-S form (as keytap writes).
    let sig = p384::ecdsa::Signature::from_der(&sig).unwrap();
    let sig = sig.normalize_s().unwrap_or(sig).to_der().as_bytes().to_vec();
    let proof = Proof {
        kind: "yubikey-piv-attestation/v1".into(),
        slot: slot.into(),
        serial,
        firmware: "5.7.4".into(),
        pin_policy: pin,
        touch_policy: touch,
        attestation_certificate: b64e(&att),
        intermediate_certificate: b64e(&std::fs::read(dir.join(format!("{prefix}-f9.der"))).unwrap()),
        nonce: NONCE.into(),
        worker_pool: worker().worker_pool,
        worker_group: worker().worker_group,
        worker_id: worker().worker_id,
        timestamp,
        signature_algorithm: "ecdsa-sha384".into(),
        signature: b64e(&sig),
    };
    json(&proof)
}

#[test]
fn yubico_shaped_chains_from_another_implementation_verify() {
    let dir = tempfile::tempdir().unwrap();
    python(&["-c".as_ref(), PY_CHAINS.as_ref(), dir.path().as_os_str()]);
    let read = |n: &str| std::fs::read(dir.path().join(format!("{n}.der"))).unwrap();

    // Chain A: RSA, root pathlen 0, f9 without basicConstraints: tolerated.
    let proof = foreign_proof(dir.path(), "a", "9c", 0x9abcdef0, PinPolicy::Always, TouchPolicy::Always);
    let mut opts = options(vec![read("a-root")]);
    opts.allow_serials = Some(vec![0x9abcdef0]);
    opts.require_pin = Some(PinPolicy::Always);
    opts.require_touch = Some(TouchPolicy::Always);
    let claims = verify_proof(&proof, &opts).unwrap_or_else(|e| panic!("chain A: {e}"));
    assert_eq!((claims.serial, claims.firmware.as_str(), claims.form_factor, claims.fips), (0x9abcdef0, "5.7.4", Some(0x83), true));
    assert_eq!(claims.key_algorithm.to_string(), "p384");
    assert_eq!(claims.chain, ["CN=YubiKey PIV Attestation 9c", "CN=Test PIV Attestation", "CN=Test U2F Root CA Serial 457200631"]);

    // Chain B needs its intermediate: refused without, accepted with.
    let proof = foreign_proof(dir.path(), "b", "9a", 12345678, PinPolicy::Once, TouchPolicy::Never);
    let mut opts = options(vec![read("b-root")]);
    let err = verify_proof(&proof, &opts).unwrap_err();
    assert!(matches!(err, AttestError::UntrustedChain(_)), "{err:?}");
    opts.intermediates = vec![read("b-inter")];
    let claims = verify_proof(&proof, &opts).unwrap_or_else(|e| panic!("chain B: {e}"));
    assert_eq!(claims.chain.len(), 4);
    assert_eq!(claims.chain[3], "CN=Test Attestation Root 1");
    // Chain B's root does not vouch for chain A's f9, and the reverse.
    let proof_a = foreign_proof(dir.path(), "a", "9c", 0x9abcdef0, PinPolicy::Always, TouchPolicy::Always);
    assert!(matches!(verify_proof(&proof_a, &opts).unwrap_err(), AttestError::UntrustedChain(_)));
}

fn path_rule(err: &AttestError) -> (&str, &str) {
    match err {
        AttestError::PathRule { subject, reason } => (subject.as_str(), reason.as_str()),
        other => panic!("expected a path rule refusal, got {other:?}"),
    }
}

/// Every issuer must be a CA and respect its path length; the leaf may carry no critical
/// extension the verifier does not process, and Yubico's policy extension is exactly 2 bytes.
/// Each variant differs from an accepted chain in that one rule only.
#[test]
fn path_rules_are_enforced_on_chains_from_another_implementation() {
    let dir = tempfile::tempdir().unwrap();
    python(&["-c".as_ref(), PY_CHAINS.as_ref(), dir.path().as_os_str()]);
    let read = |n: &str| std::fs::read(dir.path().join(format!("{n}.der"))).unwrap();
    let proof_b = foreign_proof(dir.path(), "b", "9a", 12345678, PinPolicy::Once, TouchPolicy::Never);

    // The accepted baseline: root -> intermediate -> f9 -> slot certificate.
    let mut opts = options(vec![read("b-root")]);
    opts.intermediates = vec![read("b-inter")];
    verify_proof(&proof_b, &opts).unwrap();

    // An f9 certificate that says CA:TRUE with pathlen 0 (it issues only the slot
    // certificate) is fine; one that says CA:FALSE may not issue at all.
    let proof_f = foreign_proof_with(dir.path(), "b-att", "f", "9a", 12345678, PinPolicy::Once, TouchPolicy::Never);
    verify_proof(&proof_f, &opts).unwrap();
    let proof_g = foreign_proof_with(dir.path(), "b-att", "g", "9a", 12345678, PinPolicy::Once, TouchPolicy::Never);
    let err = verify_proof(&proof_g, &opts).unwrap_err();
    assert_eq!(path_rule(&err), ("CN=Test PIV Attestation", "its basicConstraints say CA:FALSE, so it may not issue the slot certificate"));

    // An intermediate without basicConstraints.
    opts.intermediates = vec![read("c-inter")];
    let err = verify_proof(&proof_b, &opts).unwrap_err();
    assert_eq!(path_rule(&err), ("CN=Test PIV Attestation B 1", "it has no basicConstraints CA:TRUE, so it cannot serve as intermediate"));
    // An intermediate whose keyUsage does not allow certificate signing.
    opts.intermediates = vec![read("e-inter")];
    let err = verify_proof(&proof_b, &opts).unwrap_err();
    assert_eq!(path_rule(&err), ("CN=Test PIV Attestation B 1", "its keyUsage lacks keyCertSign, so it may not sign certificates"));
    // A root with pathlen 0 above an intermediate (the f9 is the end of the CA path, so one
    // CA certificate sits below the root).
    opts.roots = vec![read("d-root")];
    opts.intermediates = vec![read("b-inter")];
    let err = verify_proof(&proof_b, &opts).unwrap_err();
    assert_eq!(path_rule(&err), ("CN=Test Attestation Root 1", "its pathLenConstraint 0 allows fewer than the 1 CA certificate(s) below it"));
    // The same pathlen-0 root directly above an f9 is the U2F quirk, accepted (chain A).
    let proof_a = foreign_proof(dir.path(), "a", "9c", 0x9abcdef0, PinPolicy::Always, TouchPolicy::Always);
    verify_proof(&proof_a, &options(vec![read("a-root")])).unwrap();

    // An unknown critical extension on the slot certificate.
    let crit = foreign_proof_with(dir.path(), "a-att-crit", "a", "9c", 0x9abcdef0, PinPolicy::Always, TouchPolicy::Always);
    let err = verify_proof(&crit, &options(vec![read("a-root")])).unwrap_err();
    assert_eq!(
        err,
        AttestError::BadCertificate {
            which: "attestation",
            reason: "it has a critical extension 1.3.6.1.4.1.55555.1 this verifier does not understand".into()
        }
    );
    // A third byte after the PIN and touch policy bytes.
    let pol3 = foreign_proof_with(dir.path(), "a-att-pol3", "a", "9c", 0x9abcdef0, PinPolicy::Always, TouchPolicy::Always);
    let err = verify_proof(&pol3, &options(vec![read("a-root")])).unwrap_err();
    assert_eq!(err, AttestError::BadExtension { which: "policy", reason: "3 bytes, expected 2".into() });
}

/// The forgery from issue 18: whoever can use one slot key mints an "attestation" for a
/// software key. Every signature in it is genuine: the forged leaf is signed by the slot-9a
/// key (through the mock token, as an attacker on the machine would), and the genuine 9a
/// attestation certificate is presented as its "f9". Refused whether the device's real f9
/// certificate is configured as a root or as an intermediate.
#[test]
fn a_slot_key_cannot_mint_attestations() {
    use der::{Decode, Encode};
    use keytap::token::owner::SignContext;
    use keytap::token::SignScheme;
    use signature::{Signer, Verifier};
    use std::str::FromStr;
    use x509_cert::der::asn1::{BitString, OctetString};
    use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};

    let (a, _) = tokens();
    let guard = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let token: Box<dyn Token> = Box::new(MockToken::open(&a.path).unwrap());
    let mut owner = Owner::new(token, Arc::new(FixedPin));
    let genuine = owner.token.attest(Slot(0x9a)).unwrap();
    let slot_cert = Certificate::from_der(&genuine.slot_certificate_der).unwrap();
    let slot_key = owner.token.keys().unwrap().into_iter().find(|k| k.slot == Slot(0x9a)).unwrap();

    // A software key, claimed to be a 9a key with PIN and touch "always".
    let software = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let spki = p256::pkcs8::EncodePublicKey::to_public_key_der(software.verifying_key()).unwrap();
    let mut extensions = slot_cert.tbs_certificate.extensions.clone().unwrap();
    for e in &mut extensions {
        if e.extn_id == keytap::attest::x509::OID_POLICY {
            e.extn_value = OctetString::new(vec![0x03, 0x02]).unwrap();
        }
    }
    let ecdsa_sha256 = AlgorithmIdentifierOwned { oid: keytap::attest::x509::OID_ECDSA_SHA256, parameters: None };
    let tbs = x509_cert::TbsCertificate {
        version: x509_cert::Version::V3,
        serial_number: x509_cert::serial_number::SerialNumber::new(&[0x42; 16]).unwrap(),
        signature: ecdsa_sha256.clone(),
        issuer: slot_cert.tbs_certificate.subject.clone(),
        validity: slot_cert.tbs_certificate.validity,
        subject: x509_cert::name::Name::from_str("CN=YubiKey PIV Attestation 9a").unwrap(),
        subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki.as_bytes()).unwrap(),
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    };
    let tbs_der = tbs.to_der().unwrap();
    let context = SignContext { requester: "attacker".into(), purpose: "mint".into(), ..Default::default() };
    let leaf_sig = owner.sign(&slot_key, SignScheme::EcdsaSha256, &tbs_der, &context).unwrap();
    drop(owner);
    drop(guard);
    // The forged leaf really is signed by the slot key: a genuine signature, not a broken one.
    let slot_vk = <p256::ecdsa::VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(
        &slot_cert.tbs_certificate.subject_public_key_info.to_der().unwrap(),
    )
    .unwrap();
    slot_vk.verify(&tbs_der, &p256::ecdsa::Signature::from_der(&leaf_sig).unwrap()).unwrap();
    let leaf = Certificate { tbs_certificate: tbs, signature_algorithm: ecdsa_sha256, signature: BitString::from_bytes(&leaf_sig).unwrap() };
    let leaf_der = leaf.to_der().unwrap();

    let timestamp = now();
    let message = keytap::attest::canonical_bytes(&keytap::attest::SignedFields {
        nonce: NONCE,
        worker: &worker(),
        timestamp,
        slot: "9a",
        serial: a.serial,
        attestation_der: &leaf_der,
    });
    let sig: p256::ecdsa::Signature = software.sign(&message);
    let sig = sig.normalize_s().unwrap_or(sig);
    let proof = Proof {
        kind: "yubikey-piv-attestation/v1".into(),
        slot: "9a".into(),
        serial: a.serial,
        firmware: "5.4.3".into(),
        pin_policy: PinPolicy::Always,
        touch_policy: TouchPolicy::Always,
        attestation_certificate: b64e(&leaf_der),
        intermediate_certificate: b64e(&genuine.slot_certificate_der),
        nonce: NONCE.into(),
        worker_pool: worker().worker_pool,
        worker_group: worker().worker_group,
        worker_id: worker().worker_id,
        timestamp,
        signature_algorithm: "ecdsa-sha256".into(),
        signature: b64e(sig.to_der().as_bytes()),
    };
    let expected = AttestError::PathRule {
        subject: "CN=YubiKey PIV Attestation 9a".into(),
        reason: "it is a slot attestation certificate (Yubico slot extensions or a \"YubiKey PIV Attestation\" subject), and a slot key can never issue attestations".into(),
    };
    // The device's f9 certificate as the root, with every other demand at its strictest.
    let mut opts = options(vec![genuine.intermediate_der.clone()]);
    opts.allow_serials = Some(vec![a.serial]);
    opts.require_pin = Some(PinPolicy::Always);
    opts.require_touch = Some(TouchPolicy::Always);
    assert_eq!(verify_proof(&json(&proof), &opts).unwrap_err(), expected);
    // The f9 certificate as an intermediate under the real root.
    opts.roots = vec![root_der(&a.path)];
    opts.intermediates = vec![genuine.intermediate_der.clone()];
    assert_eq!(verify_proof(&json(&proof), &opts).unwrap_err(), expected);

    // A genuine proof with the device's f9 certificate configured as the root is refused
    // too: roots are Yubico's CAs, never device certificates.
    let honest = prove(&a.path, Slot(0x9a));
    let err = verify_proof(&json(&honest), &options(vec![genuine.intermediate_der.clone()])).unwrap_err();
    let (subject, reason) = path_rule(&err);
    assert_eq!(subject, "CN=keytap MOCK PIV Attestation (TEST)");
    assert!(reason.starts_with("this device's f9 certificate is configured as a trust root"), "{reason}");
}

/// ECDSA signatures are malleable: (r, n - s) verifies as well as (r, s). Only the low-S form
/// is accepted, and keytap's prover always writes it.
#[test]
fn high_s_challenge_signatures_are_refused() {
    use der::Decode;
    use signature::Verifier;
    let (a, _) = tokens();
    let opts = options(vec![root_der(&a.path)]);
    for _ in 0..4 {
        let proof = prove(&a.path, Slot(0x9a));
        let low = p256::ecdsa::Signature::from_der(&b64d(&proof.signature)).unwrap();
        assert!(low.normalize_s().is_none(), "the prover wrote a high-S signature");
        verify_proof(&json(&proof), &opts).unwrap();
        let (r, s) = low.split_scalars();
        let high = p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s.as_ref()).to_bytes()).unwrap();
        // Mathematically valid for the same message and key...
        let att = Certificate::from_der(&b64d(&proof.attestation_certificate)).unwrap();
        let vk = <p256::ecdsa::VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(
            &der::Encode::to_der(&att.tbs_certificate.subject_public_key_info).unwrap(),
        )
        .unwrap();
        let message = keytap::attest::canonical_bytes(&keytap::attest::SignedFields {
            nonce: &proof.nonce,
            worker: &worker(),
            timestamp: proof.timestamp,
            slot: "9a",
            serial: a.serial,
            attestation_der: &b64d(&proof.attestation_certificate),
        });
        vk.verify(&message, &high).unwrap();
        // ...but refused.
        let mut edited = proof.clone();
        edited.signature = b64e(high.to_der().as_bytes());
        let err = verify_proof(&json(&edited), &opts).unwrap_err();
        assert!(matches!(err, AttestError::BadSignature(ref m) if m.starts_with("the ECDSA signature is not in low-S form")), "{err:?}");
    }
}
