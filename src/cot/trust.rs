//! Who may sign a chain-of-trust document: raw Ed25519 keys (Taskcluster's base64 form) and
//! OpenSSH `allowed_signers` entries; and checking a signature against them.

use base64::Engine;
use ed25519_dalek::{Signature as EdSignature, VerifyingKey};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg, PublicKey, SshSig};

/// SSHSIG namespace for chain-of-trust signatures.
pub const NAMESPACE: &str = "chain-of-trust";

/// One `allowed_signers` line keytap understands.
#[derive(Clone, Debug, PartialEq)]
pub struct AllowedSigner {
    /// The principals field: a pattern list (`*`, `?`, `!negation`, comma-separated).
    pub principals: String,
    pub key: KeyData,
    /// `namespaces="..."`, a pattern list; `None` allows every namespace, as in OpenSSH.
    pub namespaces: Option<String>,
}

impl AllowedSigner {
    /// May this line's key sign in `namespace` (OpenSSH: the pattern list must match)?
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces.as_deref().map_or(true, |ns| match_pattern_list(namespace, ns) == Some(true))
    }

    /// May this line's key make a raw `.sig` (which names no namespace)? Only when the line
    /// says `chain-of-trust` explicitly: a key listed for git signing (no `namespaces=`, or
    /// other namespaces, or only a wildcard) never vouches for a raw chain-of-trust signature.
    pub fn allows_raw(&self) -> bool {
        self.namespaces.as_deref().is_some_and(|ns| ns.split(',').any(|p| p == NAMESPACE)) && self.allows_namespace(NAMESPACE)
    }

    /// Does `principal` match this line's principals (as `ssh-keygen -Y verify -I`)?
    pub fn allows_principal(&self, principal: &str) -> bool {
        match_pattern_list(principal, &self.principals) == Some(true)
    }
}

/// The keys a verifier trusts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustedKeys {
    pub raw_ed25519: Vec<[u8; 32]>,
    pub signers: Vec<AllowedSigner>,
    /// allowed_signers lines that can never authorise anything, and why (OpenSSH skips such
    /// lines too; the command prints these as warnings).
    pub ignored: Vec<String>,
}

impl TrustedKeys {
    pub fn is_empty(&self) -> bool {
        self.raw_ed25519.is_empty() && self.signers.is_empty()
    }

    /// Add `--trusted-key` values: base64 of the raw 32-byte Ed25519 public key.
    pub fn add_raw_base64(&mut self, b64: &str) -> Result<(), String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("trusted key {b64:?} is not base64 ({e}); pass the base64 of the raw 32-byte Ed25519 key (`keytap cot pubkey`)"))?;
        let raw: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("trusted key {b64:?} is {} bytes, not 32; pass the base64 of the raw Ed25519 key (`keytap cot pubkey`)", b.len())
        })?;
        VerifyingKey::from_bytes(&raw).map_err(|_| format!("trusted key {b64:?} is not a valid Ed25519 point"))?;
        self.raw_ed25519.push(raw);
        Ok(())
    }

    /// Add the entries of an `allowed_signers` file, parsed as `ssh-keygen -Y verify` parses
    /// it: `principals [options] keytype base64 [comment]`. A line OpenSSH would reject is
    /// ignored (recorded in `ignored`), as OpenSSH ignores it.
    pub fn add_allowed_signers(&mut self, text: &str) {
        for (n, line) in text.lines().enumerate() {
            match parse_allowed_signer(line) {
                Ok(Some(signer)) => self.signers.push(signer),
                Ok(None) => {}
                Err(e) => self.ignored.push(format!("allowed signers line {}: {e}; the line is ignored", n + 1)),
            }
        }
    }
}

/// OpenSSH's `match_pattern_list`: comma-separated patterns with `*` and `?`, a leading `!`
/// negates. `Some(false)` when a negated pattern matches (a veto), `Some(true)` when a
/// positive one does, `None` otherwise. Nothing is trimmed: `" x"` does not match `x`.
pub fn match_pattern_list(s: &str, list: &str) -> Option<bool> {
    let mut positive = None;
    for pattern in list.split(',') {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if match_pattern(s.as_bytes(), pattern.as_bytes()) {
            if negated {
                return Some(false);
            }
            positive = Some(true);
        }
    }
    positive
}

/// Glob match of a whole string: `*` any run, `?` one byte.
fn match_pattern(s: &[u8], p: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_pattern(&s[i..], rest)),
        Some((b'?', rest)) => !s.is_empty() && match_pattern(&s[1..], rest),
        Some((c, rest)) => s.first() == Some(c) && match_pattern(&s[1..], rest),
    }
}

/// One whitespace-delimited field, or a double-quoted one (quotes removed), as OpenSSH's
/// `strdelimw`; returns (field, rest).
fn next_field(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        return None;
    }
    if let Some(inner) = s.strip_prefix('"') {
        let end = inner.find('"')?;
        return Some((inner[..end].to_string(), &inner[end + 1..]));
    }
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    Some((s[..end].to_string(), &s[end..]))
}

/// The options field: up to the first whitespace outside double quotes.
fn split_options_field(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ' ' | '\t' if !quoted => return (&s[..i], &s[i..]),
            _ => {}
        }
    }
    (s, "")
}

/// A quoted option value (`"..."`, `\"` for a quote inside), as OpenSSH's `opt_dequote`.
fn dequote(s: &str) -> Result<(String, &str), String> {
    let Some(inner) = s.strip_prefix('"') else { return Err("missing start quote".into()) };
    let mut out = String::new();
    let mut chars = inner.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((out, &inner[i + 1..])),
            '\\' if inner[i + 1..].starts_with('"') => {
                out.push('"');
                chars.next();
            }
            c => out.push(c),
        }
    }
    Err("missing end quote".into())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Parsed options of one line (OpenSSH's `sigopts_parse`).
struct Options {
    cert_authority: bool,
    namespaces: Option<String>,
}

fn parse_options(mut s: &str) -> Result<Options, String> {
    let mut o = Options { cert_authority: false, namespaces: None };
    while !s.is_empty() {
        if let Some(rest) = strip_prefix_ignore_case(s, "cert-authority") {
            o.cert_authority = true;
            s = rest;
        } else if let Some(rest) = strip_prefix_ignore_case(s, "namespaces=") {
            if o.namespaces.is_some() {
                return Err("multiple \"namespaces\" clauses".into());
            }
            let (value, rest) = dequote(rest)?;
            o.namespaces = Some(value);
            s = rest;
        } else if strip_prefix_ignore_case(s, "valid-after=").is_some() || strip_prefix_ignore_case(s, "valid-before=").is_some() {
            // Validity windows need a clock policy keytap does not apply: never ignore one.
            return Err("valid-after/valid-before are not supported by keytap's verifier; verify with `ssh-keygen -Y verify` or drop the option".into());
        }
        if s.is_empty() {
            break;
        }
        let Some(rest) = s.strip_prefix(',') else { return Err("unknown key option".into()) };
        if rest.is_empty() {
            return Err("unexpected end-of-options".into());
        }
        s = rest;
    }
    Ok(o)
}

/// `Ok(None)` for lines that authorise nothing here: comments, blank lines and certificate
/// authorities (keytap accepts no certificates in signatures).
fn parse_allowed_signer(line: &str) -> Result<Option<AllowedSigner>, String> {
    let line = line.trim_end_matches('\r');
    let trimmed = line.trim_start_matches([' ', '\t']);
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let (principals, rest) = next_field(trimmed).ok_or("invalid line")?;
    let rest = rest.trim_start_matches([' ', '\t']);
    // A key when the next word is a key type; otherwise options come first.
    let first_word = rest.split([' ', '\t']).next().unwrap_or("");
    let (options, key_text) = if first_word.parse::<Algorithm>().is_ok() {
        (None, rest)
    } else {
        let (opts, after) = split_options_field(rest);
        (Some(opts), after.trim_start_matches([' ', '\t']))
    };
    let options = options.map(parse_options).transpose()?;
    let key = PublicKey::from_openssh(key_text.trim_end()).map_err(|e| format!("invalid key ({e})"))?;
    if options.as_ref().is_some_and(|o| o.cert_authority) {
        return Ok(None);
    }
    Ok(Some(AllowedSigner { principals, key: key.key_data().clone(), namespaces: options.and_then(|o| o.namespaces) }))
}

/// A detached signature over a chain-of-trust document.
#[derive(Clone, Debug)]
pub enum CotSignature {
    /// Taskcluster's `chain-of-trust.json.sig`: the raw 64-byte Ed25519 signature.
    RawEd25519([u8; 64]),
    /// `chain-of-trust.json.sshsig`: an armored SSHSIG in namespace `chain-of-trust`.
    SshSig(SshSig),
}

impl CotSignature {
    pub fn parse(bytes: &[u8]) -> Result<CotSignature, String> {
        if bytes.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
            return SshSig::from_pem(bytes).map(CotSignature::SshSig).map_err(|e| format!("malformed SSH signature: {e}"));
        }
        let raw: [u8; 64] = bytes
            .try_into()
            .map_err(|_| format!("signature file is {} bytes; a raw Ed25519 signature is 64 bytes and an SSHSIG starts with -----BEGIN SSH SIGNATURE-----", bytes.len()))?;
        Ok(CotSignature::RawEd25519(raw))
    }
}

fn raw_key_name(raw: &[u8; 32]) -> String {
    format!("trusted key {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

fn signer_name(s: &AllowedSigner) -> String {
    format!("{} ({})", s.principals, s.key.fingerprint(HashAlg::Sha256))
}

/// Who made a signature that verified.
#[derive(Clone, Debug, PartialEq)]
pub struct Signer {
    /// For reports: `trusted key <b64>` or `principals (SHA256:...)`.
    pub name: String,
    /// The allowed_signers lines that vouch for the key; empty when a `--trusted-key` made
    /// it, which carries no principals.
    pub lines: Vec<AllowedSigner>,
}

impl Signer {
    /// Is `principal` one this signer may sign as? Always for a `--trusted-key`.
    pub fn allows_principal(&self, principal: &str) -> bool {
        self.lines.is_empty() || self.lines.iter().any(|l| l.allows_principal(principal))
    }
}

fn ignored_note(trusted: &TrustedKeys) -> String {
    match trusted.ignored.len() {
        0 => String::new(),
        n => format!(" ({n} allowed_signers line(s) ignored as malformed, see the warnings)"),
    }
}

/// Check `signature` over exactly `bytes`; on success say which trusted key made it.
pub fn verify_signature(bytes: &[u8], signature: &CotSignature, trusted: &TrustedKeys) -> Result<Signer, String> {
    match signature {
        CotSignature::RawEd25519(raw) => {
            let sig = EdSignature::from_bytes(raw);
            let verifies = |key: &[u8; 32]| VerifyingKey::from_bytes(key).is_ok_and(|vk| vk.verify_strict(bytes, &sig).is_ok());
            if let Some(k) = trusted.raw_ed25519.iter().find(|k| verifies(k)) {
                return Ok(Signer { name: raw_key_name(k), lines: Vec::new() });
            }
            let lines: Vec<AllowedSigner> = trusted
                .signers
                .iter()
                .filter(|s| s.allows_raw() && s.key.ed25519().is_some_and(|ed| verifies(&ed.0)))
                .cloned()
                .collect();
            if let Some(first) = lines.first() {
                return Ok(Signer { name: signer_name(first), lines });
            }
            if trusted.raw_ed25519.is_empty() && !trusted.signers.iter().any(AllowedSigner::allows_raw) {
                return Err(format!(
                    "no key may vouch for a raw .sig: pass --trusted-key, or list the key in allowed_signers with namespaces=\"{NAMESPACE}\"{}",
                    ignored_note(trusted)
                ));
            }
            Err(format!("the Ed25519 signature does not verify with any trusted key{}", ignored_note(trusted)))
        }
        CotSignature::SshSig(sig) => {
            if sig.namespace() != NAMESPACE {
                return Err(format!("the SSH signature is for namespace {:?}, not {NAMESPACE:?}", sig.namespace()));
            }
            let key = sig.public_key();
            let raw = key.ed25519().and_then(|ed| trusted.raw_ed25519.iter().find(|k| **k == ed.0));
            let lines: Vec<AllowedSigner> =
                trusted.signers.iter().filter(|s| &s.key == key && s.allows_namespace(NAMESPACE)).cloned().collect();
            let signer = match (raw, lines.first()) {
                (Some(k), _) => Signer { name: raw_key_name(k), lines: Vec::new() },
                (None, Some(first)) => Signer { name: signer_name(first), lines: lines.clone() },
                (None, None) => {
                    return Err(format!(
                        "the SSH signature was made by {}, which is not a trusted signer{}",
                        key.fingerprint(HashAlg::Sha256),
                        ignored_note(trusted)
                    ))
                }
            };
            PublicKey::from(key.clone())
                .verify(NAMESPACE, bytes, sig)
                .map_err(|e| format!("the SSH signature by {} does not verify: {e}", signer.name))?;
            Ok(signer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::{LineEnding, PrivateKey};

    fn ed() -> PrivateKey {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    fn parsed(line: &str) -> Result<Option<AllowedSigner>, String> {
        parse_allowed_signer(line)
    }

    #[test]
    fn pattern_lists_match_as_openssh() {
        assert_eq!(match_pattern_list("chain-of-trust", "git,chain-of-trust"), Some(true));
        assert_eq!(match_pattern_list("chain-of-trust", "chain-*"), Some(true));
        assert_eq!(match_pattern_list("chain-of-trust", "x,!x"), None);
        assert_eq!(match_pattern_list("chain-of-trust", "chain-of-trust,!chain-of-trust"), Some(false));
        assert_eq!(match_pattern_list("chain-of-trust", "!chain-*,*"), Some(false));
        assert_eq!(match_pattern_list("chain-of-trust", "git, chain-of-trust"), None);
        assert_eq!(match_pattern_list("chain-of-trust", ""), None);
        assert_eq!(match_pattern_list("w@o", "?@o"), Some(true));
        assert_eq!(match_pattern_list("w@o", "W@O"), None);
    }

    /// Each case as `ssh-keygen -Y verify` (OpenSSH 9.2) decides it for namespace
    /// chain-of-trust and principal w@o.
    #[test]
    fn allowed_signers_lines_parse_as_openssh() {
        let k = ed().public_key().to_openssh().unwrap();
        let ok = |line: &str| parsed(line).unwrap_or_else(|e| panic!("{line}: {e}")).unwrap_or_else(|| panic!("{line}: skipped"));
        let usable = |line: &str| {
            let s = ok(line);
            s.allows_namespace(NAMESPACE) && s.allows_principal("w@o")
        };
        assert!(usable(&format!("w@o {k}")));
        assert!(usable(&format!("  w@o {k}")), "leading whitespace is skipped");
        assert!(usable(&format!("w@o\t{k}")));
        assert!(usable(&format!("w@o {k} a comment")));
        assert!(usable(&format!("w@o NAMESPACES=\"chain-of-trust\" {k}")), "option names ignore case");
        assert!(usable(&format!("w@o namespaces=\"chain-*\" {k}")));
        assert!(usable(&format!("*@o {k}")));
        assert!(usable(&format!("x@o,w@o {k}")));
        assert!(usable(&format!("\"w@o,x\" {k}")));
        for refused in [
            format!("w@o namespaces=\"x,!x\" {k}"),
            format!("w@o namespaces=\"chain-of-trust,!chain-of-trust\" {k}"),
            format!("w@o namespaces=\" chain-of-trust\" {k}"),
            format!("w@o namespaces=\"git, chain-of-trust\" {k}"),
            format!("w@o namespaces=\"\" {k}"),
            format!("!w@o,* {k}"),
            format!("W@O {k}"),
        ] {
            assert!(!usable(&refused), "{refused}");
        }
        for (line, reason) in [
            (format!("w@o namespaces=\"git\",namespaces=\"chain-of-trust\" {k}"), "multiple \"namespaces\" clauses"),
            (format!("w@o namespaces=\"chain-of-trust\",namespaces=\"chain-of-trust\" {k}"), "multiple \"namespaces\" clauses"),
            (format!("w@o namespaces=chain-of-trust {k}"), "missing start quote"),
            (format!("w@o namespaces=\"chain-of-trust {k}"), "missing end quote"),
            (format!("w@o namespaces=\"chain-of-trust\", {k}"), "unexpected end-of-options"),
            (format!("w@o foo {k}"), "unknown key option"),
        ] {
            assert_eq!(parsed(&line).unwrap_err(), reason, "{line}");
        }
        assert!(parsed(&format!("w@o valid-before=\"20300101\" {k}")).unwrap_err().contains("not supported"));
        assert!(parsed("w@o ssh-ed25519").unwrap_err().starts_with("invalid key"));
        assert_eq!(parsed(&format!("ca@ci cert-authority {k}")), Ok(None));
        assert_eq!(parsed("  # comment"), Ok(None));
    }

    #[test]
    fn malformed_lines_are_ignored_and_reported() {
        let k = ed().public_key().to_openssh().unwrap();
        let mut t = TrustedKeys::default();
        t.add_allowed_signers(&format!("# c\n\nw@o namespaces=\"a\",namespaces=\"b\" {k}\nw@o {k}\n"));
        assert_eq!(t.signers.len(), 1);
        assert_eq!(t.ignored, ["allowed signers line 3: multiple \"namespaces\" clauses; the line is ignored"]);
    }

    #[test]
    fn raw_keys_must_be_32_bytes_of_base64() {
        let mut t = TrustedKeys::default();
        assert!(t.add_raw_base64("not base64!").unwrap_err().contains("not base64"));
        assert!(t.add_raw_base64("AAAA").unwrap_err().contains("3 bytes, not 32"));
    }

    #[test]
    fn raw_signatures_need_an_explicit_chain_of_trust_line() {
        use signature::Signer as _;
        let key = ed();
        let line = key.public_key().to_openssh().unwrap();
        let dalek = ed25519_dalek::SigningKey::from_bytes(&key.key_data().ed25519().unwrap().private.to_bytes());
        let raw = CotSignature::RawEd25519(dalek.sign(b"doc").to_bytes());
        // A file meant for git signing: no namespaces, a git namespace, or only a wildcard.
        for git_file in [format!("w@o {line}"), format!("w@o namespaces=\"git\" {line}"), format!("w@o namespaces=\"*\" {line}")] {
            let mut t = TrustedKeys::default();
            t.add_allowed_signers(&git_file);
            let err = verify_signature(b"doc", &raw, &t).unwrap_err();
            assert!(err.starts_with("no key may vouch for a raw .sig: pass --trusted-key, or list the key in allowed_signers with namespaces=\"chain-of-trust\""), "{git_file}: {err}");
        }
        let mut t = TrustedKeys::default();
        t.add_allowed_signers(&format!("w@o namespaces=\"git,chain-of-trust\" {line}"));
        let signer = verify_signature(b"doc", &raw, &t).unwrap();
        assert!(signer.name.starts_with("w@o (SHA256:"));
        assert!(signer.allows_principal("w@o") && !signer.allows_principal("x@o"));
        assert_eq!(verify_signature(b"doc!", &raw, &t).unwrap_err(), "the Ed25519 signature does not verify with any trusted key");
    }

    #[test]
    fn sshsig_in_another_namespace_or_by_untrusted_key_is_refused() {
        let ed = ed();
        let other = super::tests::ed();
        let mut t = TrustedKeys::default();
        t.add_allowed_signers(&format!("w {}", ed.public_key().to_openssh().unwrap()));
        let good = SshSig::sign(&ed, NAMESPACE, HashAlg::Sha512, b"doc").unwrap();
        assert!(verify_signature(b"doc", &CotSignature::SshSig(good.clone()), &t).unwrap().name.starts_with("w (SHA256:"));
        let pem = good.to_pem(LineEnding::LF).unwrap();
        assert!(matches!(CotSignature::parse(pem.as_bytes()), Ok(CotSignature::SshSig(_))));
        assert!(verify_signature(b"doc!", &CotSignature::SshSig(good), &t).unwrap_err().contains("does not verify"));
        let git = SshSig::sign(&ed, "git", HashAlg::Sha512, b"doc").unwrap();
        assert!(verify_signature(b"doc", &CotSignature::SshSig(git), &t).unwrap_err().contains("namespace \"git\""));
        let stranger = SshSig::sign(&other, NAMESPACE, HashAlg::Sha512, b"doc").unwrap();
        assert!(verify_signature(b"doc", &CotSignature::SshSig(stranger), &t).unwrap_err().contains("not a trusted signer"));
        assert!(CotSignature::parse(&[0u8; 63]).unwrap_err().contains("63 bytes"));
        // A line that does not permit the namespace does not vouch for the key.
        let mut t = TrustedKeys::default();
        t.add_allowed_signers(&format!("w namespaces=\"x,!x\" {}", ed.public_key().to_openssh().unwrap()));
        let good = SshSig::sign(&ed, NAMESPACE, HashAlg::Sha512, b"doc").unwrap();
        assert!(verify_signature(b"doc", &CotSignature::SshSig(good), &t).unwrap_err().contains("not a trusted signer"));
    }
}
