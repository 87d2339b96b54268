//! Which names the user's known_hosts gives a destination's host key (for `ssh-auth:HOST` rules).
//!
//! Matching follows OpenSSH (`hostfile.c`, `match.c`), so a rule means what `ssh` means:
//!
//! - A destination is a host and a port. ssh looks up port 22 as the bare `host` and any other
//!   port as `[host]:port`; an `ssh-auth:` rule names a destination the same way
//!   (`ssh-auth:git.example` is port 22, `ssh-auth:[git.example]:2222` port 2222).
//! - A line's host field is a comma-separated pattern list (`*` and `?` wildcards, compared
//!   without regard to ASCII case). A line matches a name when some pattern matches it and no
//!   negated pattern (`!name`) does: `*.example,!jump.example` is every host under example
//!   except jump.example.
//! - A hashed field (`|1|salt|hash`) matches the one name whose HMAC-SHA1 it holds.
//! - `@cert-authority` lines hold CA keys, never host keys: they count only for host
//!   certificates ([`names_for_ca`], [`host_cert_names`]).
//! - A key on any `@revoked` line matches nowhere, whatever names its other lines give it
//!   (sshd(8): "must not ever be accepted").
//!
//! Reading the files is blocking I/O: call these from a blocking thread.

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use ssh_key::known_hosts::{HostPatterns, KnownHosts, Marker};
use ssh_key::public::KeyData;
use ssh_key::Certificate;

/// ssh's default port: looked up under the bare host name.
pub const DEFAULT_PORT: u16 = 22;

/// Where ssh connects: the host name it was given (or its HostKeyAlias) and the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: u16,
}

impl Destination {
    /// Read a destination as known_hosts and `ssh-auth:` rules write it: `host` (port 22) or
    /// `[host]:port`. Anything else is taken as a bare host name.
    pub fn parse(text: &str) -> Destination {
        if let Some((host, port)) = text.strip_prefix('[').and_then(|rest| rest.split_once("]:")) {
            if let Ok(port) = port.parse::<u16>() {
                return Destination { host: host.to_string(), port };
            }
        }
        Destination { host: text.to_string(), port: DEFAULT_PORT }
    }

    /// The name ssh looks up in known_hosts (OpenSSH's `put_host_port`).
    pub fn lookup_name(&self) -> String {
        if self.port == DEFAULT_PORT {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

/// One known_hosts line, as far as matching needs it.
struct Line {
    marker: Option<Marker>,
    hosts: HostPatterns,
    key: KeyData,
}

impl Line {
    fn matches(&self, name: &str) -> bool {
        match &self.hosts {
            HostPatterns::Patterns(patterns) => pattern_list_matches(patterns, name),
            HostPatterns::HashedName { salt, hash } => hashed_matches(salt, hash, name),
        }
    }
}

/// Every parseable line of `files`; missing or unreadable files and malformed lines are skipped,
/// as ssh does.
fn read_lines(files: &[PathBuf]) -> Vec<Line> {
    let mut lines = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for entry in KnownHosts::new(&text).flatten() {
            lines.push(Line { marker: entry.marker().cloned(), hosts: entry.host_patterns().clone(), key: entry.public_key().key_data().clone() });
        }
    }
    lines
}

fn revoked(lines: &[Line], key: &KeyData) -> bool {
    lines.iter().any(|l| matches!(l.marker, Some(Marker::Revoked)) && &l.key == key)
}

/// Names under which the plain host key `host_key` is known in `files`, for `ssh-auth:HOST`
/// rules and the audit log:
///
/// - each of `candidates` (destinations as [`Destination::parse`] reads them, usually the
///   hosts of the key's `ssh-auth:` rules) that a plain line for this key matches, returned as
///   given, so a rule compares equal to it;
/// - every literal name written on such a line that the line really matches (a name the line
///   also negates is not), as written: `[host]:port` stays `[host]:port` and never stands for
///   `host`.
///
/// Empty when the key is on an `@revoked` line anywhere. `@cert-authority` lines are ignored.
pub fn names_for(host_key: &KeyData, candidates: &[&str], files: &[PathBuf]) -> Vec<String> {
    let lines = read_lines(files);
    if revoked(&lines, host_key) {
        return Vec::new();
    }
    let mut names = Vec::new();
    for line in lines.iter().filter(|l| l.marker.is_none() && &l.key == host_key) {
        names.extend(matching_candidates(line, candidates));
        if let HostPatterns::Patterns(patterns) = &line.hosts {
            for pattern in patterns {
                if !pattern.starts_with('!') && !pattern.contains(['*', '?']) && line.matches(pattern) {
                    names.push(pattern.to_ascii_lowercase());
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Of `candidates` (destinations as [`Destination::parse`] reads them), those for which an
/// `@cert-authority` line in `files` trusts `ca_key` (a host certificate's signature key).
/// Empty when the CA key is on an `@revoked` line anywhere. Plain host key lines are ignored.
///
/// This says only that the CA may vouch for those names. Whether a certificate it signed is
/// valid for them (principals, type, time, the certificate's own revocation) is
/// [`host_cert_names`]'s job: use that for a host certificate from `session-bind`.
pub fn names_for_ca(ca_key: &KeyData, candidates: &[&str], files: &[PathBuf]) -> Vec<String> {
    let lines = read_lines(files);
    ca_names(&lines, ca_key, candidates)
}

fn ca_names(lines: &[Line], ca_key: &KeyData, candidates: &[&str]) -> Vec<String> {
    if revoked(lines, ca_key) {
        return Vec::new();
    }
    let mut names = Vec::new();
    for line in lines.iter().filter(|l| matches!(l.marker, Some(Marker::CertAuthority)) && &l.key == ca_key) {
        names.extend(matching_candidates(line, candidates));
    }
    names.sort();
    names.dedup();
    names
}

/// Names under which `@cert-authority` lines trust `ca_key` to certify a host whose own key is
/// `host_key`: [`names_for_ca`], and nothing when `@revoked` lists the host's key. For callers
/// that check the certificate's type, validity and principals themselves (session-bind reads
/// certificates ssh-key refuses, such as ones valid "forever").
pub fn cert_authority_names(ca_key: &KeyData, host_key: &KeyData, candidates: &[&str], files: &[PathBuf]) -> Vec<String> {
    let lines = read_lines(files);
    if revoked(&lines, host_key) {
        return Vec::new();
    }
    ca_names(&lines, ca_key, candidates)
}

/// Of `candidates`, the destinations `cert` (a host certificate whose CA signature the caller
/// has verified) is accepted for at `now` (seconds since the epoch), as ssh accepts it:
///
/// - it is a host certificate, valid at `now` (`valid_after` inclusive, `valid_before`
///   exclusive);
/// - an `@cert-authority` line for its signature key matches the destination
///   ([`names_for_ca`]);
/// - it lists the destination's host among its principals, exactly (a certificate with no
///   principals is valid for any host, as in OpenSSH);
/// - neither the certificate's key nor its CA key is on an `@revoked` line.
pub fn host_cert_names(cert: &Certificate, now: u64, candidates: &[&str], files: &[PathBuf]) -> Vec<String> {
    if cert.cert_type() != ssh_key::certificate::CertType::Host || now < cert.valid_after() || now >= cert.valid_before() {
        return Vec::new();
    }
    let lines = read_lines(files);
    if revoked(&lines, cert.public_key()) {
        return Vec::new();
    }
    let principals = cert.valid_principals();
    ca_names(&lines, cert.signature_key(), candidates)
        .into_iter()
        .filter(|name| principals.is_empty() || principals.iter().any(|p| *p == Destination::parse(name).host))
        .collect()
}

fn matching_candidates<'a>(line: &'a Line, candidates: &'a [&str]) -> impl Iterator<Item = String> + 'a {
    candidates.iter().filter(|c| line.matches(&Destination::parse(c).lookup_name())).map(|c| c.to_string())
}

/// OpenSSH's `match_hostname`: positive when some pattern matches and no negated one does.
fn pattern_list_matches(patterns: &[String], name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let mut positive = false;
    for pattern in patterns {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern.as_str()),
        };
        if glob(&pattern.to_ascii_lowercase(), &name) {
            if negated {
                return false;
            }
            positive = true;
        }
    }
    positive
}

fn hashed_matches(salt: &[u8], hash: &[u8; 20], name: &str) -> bool {
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else { return false };
    mac.update(name.as_bytes());
    mac.verify_slice(hash).is_ok()
}

/// ssh's pattern syntax: `*` any run, `?` any one character; callers fold case.
fn glob(pattern: &str, name: &str) -> bool {
    // Iterative with one backtrack point, so a pattern of many `*` stays linear-ish.
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use ssh_key::certificate::{Builder, CertType};

    fn new_key() -> ssh_key::PrivateKey {
        ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap()
    }

    fn key_line() -> (KeyData, String) {
        let k = new_key();
        let line = k.public_key().to_openssh().unwrap();
        (k.public_key().key_data().clone(), line)
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD;
        format!("|1|{}|{}", b64.encode(salt), b64.encode(mac.finalize().into_bytes()))
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> Vec<PathBuf> {
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, text).unwrap();
        vec![file, dir.path().join("missing")]
    }

    #[test]
    fn plain_hashed_and_wildcard_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (key, line) = key_line();
        let (other, other_line) = key_line();
        let files = write(
            &dir,
            &format!(
                "GitHub.com {line}\n{} {line}\n*.example.org {line}\nnotthis.com {other_line}\n# comment\n\ngarbage line\n",
                hashed("secret-host", b"0123456789abcdef0123")
            ),
        );
        let names = names_for(&key, &["secret-host", "a.example.org", "nope", "A.Example.org"], &files);
        assert_eq!(names, ["A.Example.org", "a.example.org", "github.com", "secret-host"]);
        assert_eq!(names_for(&other, &["secret-host"], &files), ["notthis.com"]);
    }

    #[test]
    fn negated_patterns_exclude_names_as_in_openssh() {
        let dir = tempfile::tempdir().unwrap();
        let (key, line) = key_line();
        let files = write(&dir, &format!("*.example,!jump.example {line}\nbastion.example,!bastion.example {line}\n"));
        assert_eq!(names_for(&key, &["web.example", "jump.example", "JUMP.example"], &files), ["web.example"]);
        // A literal name that its own line negates is not a name of the key.
        assert!(!names_for(&key, &[], &files).contains(&"bastion.example".to_string()));
    }

    #[test]
    fn ports_are_part_of_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let (key, line) = key_line();
        let (bare_key, bare_line) = key_line();
        let hashed_port = hashed("[hidden.example]:2200", b"saltsaltsaltsaltsalt");
        let files = write(&dir, &format!("[gh.local]:2222 {line}\n{hashed_port} {line}\n[*.wild]:2022 {line}\nplain.example {bare_line}\n"));
        // `[host]:port` is reported as written and never stands for the bare host.
        assert_eq!(names_for(&key, &["gh.local", "hidden.example"], &files), ["[gh.local]:2222"]);
        assert_eq!(
            names_for(&key, &["[gh.local]:2222", "[hidden.example]:2200", "[a.wild]:2022", "[a.wild]:22", "a.wild"], &files),
            ["[a.wild]:2022", "[gh.local]:2222", "[hidden.example]:2200"]
        );
        // Port 22 is the bare name, in either spelling.
        assert_eq!(names_for(&bare_key, &["[plain.example]:22", "[plain.example]:2222"], &files), ["[plain.example]:22", "plain.example"]);
        assert_eq!(Destination::parse("[h]:22").lookup_name(), "h");
        assert_eq!(Destination::parse("[h]:x").lookup_name(), "[h]:x");
        assert_eq!(Destination::parse("h").port, 22);
    }

    #[test]
    fn a_revoked_key_matches_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let (key, line) = key_line();
        let files = write(&dir, &format!("good.example {line}\n@revoked evil.example {line}\n"));
        assert!(names_for(&key, &["good.example"], &files).is_empty());
        // The @revoked line may be in another file.
        let (key2, line2) = key_line();
        let other = dir.path().join("ssh_known_hosts");
        std::fs::write(&other, format!("@revoked * {line2}\n")).unwrap();
        std::fs::write(&files[0], format!("good.example {line2}\n")).unwrap();
        assert_eq!(names_for(&key2, &["good.example"], &files), ["good.example"]);
        assert!(names_for(&key2, &["good.example"], &[files[0].clone(), other]).is_empty());
    }

    #[test]
    fn cert_authority_lines_are_not_host_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_line) = key_line();
        let files = write(&dir, &format!("@cert-authority *.corp.example,!bad.corp.example {ca_line}\n"));
        assert!(names_for(&ca, &["a.corp.example"], &files).is_empty(), "a CA key is no host key");
        assert_eq!(names_for_ca(&ca, &["a.corp.example", "bad.corp.example", "other.example", "[b.corp.example]:2222"], &files), ["a.corp.example"]);
        let (plain, plain_line) = key_line();
        std::fs::write(&files[0], format!("a.corp.example {plain_line}\n@cert-authority *.corp.example {ca_line}\n@revoked * {ca_line}\n")).unwrap();
        assert!(names_for_ca(&plain, &["a.corp.example"], &files).is_empty(), "a host key is no CA");
        assert!(names_for_ca(&ca, &["a.corp.example"], &files).is_empty(), "revoked CA");
    }

    fn host_cert(ca: &ssh_key::PrivateKey, subject: &KeyData, principals: &[&str], kind: CertType) -> Certificate {
        let mut b = Builder::new_with_random_nonce(&mut rand_core::OsRng, subject.clone(), 100, 200).unwrap();
        b.cert_type(kind).unwrap().key_id("host").unwrap();
        for p in principals {
            b.valid_principal(*p).unwrap();
        }
        if principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        b.sign(ca).unwrap()
    }

    #[test]
    fn host_certificates_need_a_ca_line_a_principal_and_the_time() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_key();
        let ca_line = ca.public_key().to_openssh().unwrap();
        let (host, host_line) = key_line();
        let files = write(&dir, &format!("@cert-authority *.corp.example {ca_line}\n"));
        let cert = host_cert(&ca, &host, &["a.corp.example", "b.corp.example"], CertType::Host);
        // A CA line without a port is for port 22 only.
        assert_eq!(host_cert_names(&cert, 150, &["a.corp.example", "[b.corp.example]:2222"], &files), ["a.corp.example"]);
        std::fs::write(&files[0], format!("@cert-authority *.corp.example,[*.corp.example]:2222 {ca_line}\n")).unwrap();
        let cert = host_cert(&ca, &host, &["a.corp.example", "b.corp.example"], CertType::Host);
        let candidates = ["a.corp.example", "[b.corp.example]:2222", "c.corp.example", "a.other.example"];
        assert_eq!(host_cert_names(&cert, 150, &candidates, &files), ["[b.corp.example]:2222", "a.corp.example"]);
        assert!(host_cert_names(&cert, 99, &candidates, &files).is_empty(), "not yet valid");
        assert!(host_cert_names(&cert, 200, &candidates, &files).is_empty(), "expired");
        let any = host_cert(&ca, &host, &[], CertType::Host);
        assert_eq!(host_cert_names(&any, 150, &candidates, &files), ["[b.corp.example]:2222", "a.corp.example", "c.corp.example"]);
        let user = host_cert(&ca, &host, &["a.corp.example"], CertType::User);
        assert!(host_cert_names(&user, 150, &candidates, &files).is_empty(), "a user certificate");
        std::fs::write(&files[0], format!("@cert-authority *.corp.example {ca_line}\n@revoked * {host_line}\n")).unwrap();
        assert!(host_cert_names(&cert, 150, &candidates, &files).is_empty(), "revoked host key");
        let stranger = new_key();
        let forged = host_cert(&stranger, &host, &["a.corp.example"], CertType::Host);
        assert!(host_cert_names(&forged, 150, &candidates, &files).is_empty(), "another CA");
    }

    #[test]
    fn glob_matches_like_ssh() {
        assert!(glob("*.example.org", "a.b.example.org"));
        assert!(glob("host?", "host1"));
        assert!(!glob("host?", "host12"));
        assert!(!glob("*.example.org", "example.org"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob(&"*".repeat(200), &"a".repeat(200)));
        assert!(!glob(&format!("{}b", "*a".repeat(50)), &"a".repeat(200)));
    }
}
