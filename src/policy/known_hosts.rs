//! Which names the user's known_hosts gives a host key (for `ssh-auth:HOST` rules).

use std::path::PathBuf;

use hmac::{Hmac, Mac};
use ssh_key::known_hosts::{HostPatterns, KnownHosts, Marker};
use ssh_key::public::KeyData;

/// Names under which `host_key` is listed in `files`: every plain (non-wildcard) name, plus each
/// of `candidates` that a hashed or wildcard entry matches. `[host]:port` is reported as `host`.
pub fn names_for(host_key: &KeyData, candidates: &[&str], files: &[PathBuf]) -> Vec<String> {
    let mut names = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for entry in KnownHosts::new(&text).flatten() {
            if entry.public_key().key_data() != host_key || matches!(entry.marker(), Some(Marker::Revoked)) {
                continue;
            }
            match entry.host_patterns() {
                HostPatterns::Patterns(patterns) => {
                    for pattern in patterns {
                        if pattern.starts_with('!') {
                            continue;
                        }
                        if pattern.contains(['*', '?']) {
                            names.extend(candidates.iter().filter(|c| glob(pattern, c)).map(|c| c.to_string()));
                        } else {
                            names.push(strip_port(pattern).to_string());
                        }
                    }
                }
                HostPatterns::HashedName { salt, hash } => {
                    names.extend(candidates.iter().filter(|c| hashed_matches(salt, hash, c)).map(|c| c.to_string()));
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Names under which `@cert-authority` lines in `files` trust `ca_key` to certify hosts: the
/// plain names of such lines, plus each of `candidates` that a hashed or wildcard pattern
/// matches, minus any a negated pattern (`!name`) of the same line matches. Nothing when an
/// `@revoked` line lists the CA or the host's own key.
pub fn cert_authority_names(ca_key: &KeyData, host_key: &KeyData, candidates: &[&str], files: &[PathBuf]) -> Vec<String> {
    let mut names = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for entry in KnownHosts::new(&text).flatten() {
            let key = entry.public_key().key_data();
            match entry.marker() {
                Some(Marker::Revoked) if key == ca_key || key == host_key => return Vec::new(),
                Some(Marker::CertAuthority) if key == ca_key => {}
                _ => continue,
            }
            match entry.host_patterns() {
                HostPatterns::Patterns(patterns) => {
                    let negated: Vec<&str> = patterns.iter().filter_map(|p| p.strip_prefix('!')).collect();
                    let allowed = |name: &str| !negated.iter().any(|n| glob(strip_port(n), name));
                    for pattern in patterns.iter().filter(|p| !p.starts_with('!')) {
                        if pattern.contains(['*', '?']) {
                            names.extend(candidates.iter().filter(|c| glob(pattern, c) && allowed(c)).map(|c| c.to_string()));
                        } else if allowed(strip_port(pattern)) {
                            names.push(strip_port(pattern).to_string());
                        }
                    }
                }
                HostPatterns::HashedName { salt, hash } => {
                    names.extend(candidates.iter().filter(|c| hashed_matches(salt, hash, c)).map(|c| c.to_string()));
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn strip_port(pattern: &str) -> &str {
    pattern.strip_prefix('[').and_then(|p| p.split_once("]:")).map(|(h, _)| h).unwrap_or(pattern)
}

fn hashed_matches(salt: &[u8], hash: &[u8; 20], name: &str) -> bool {
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else { return false };
    mac.update(name.as_bytes());
    mac.verify_slice(hash).is_ok()
}

/// ssh's pattern syntax: `*` any run, `?` any one character.
fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn key_line() -> (KeyData, String) {
        let k = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
        let line = k.public_key().to_openssh().unwrap();
        (k.public_key().key_data().clone(), line)
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(salt).unwrap();
        mac.update(name.as_bytes());
        let b64 = base64::engine::general_purpose::STANDARD;
        format!("|1|{}|{}", b64.encode(salt), b64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn plain_hashed_wildcard_and_revoked_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (key, line) = key_line();
        let (other, other_line) = key_line();
        let file = dir.path().join("known_hosts");
        std::fs::write(
            &file,
            format!(
                "github.com,[gh.local]:2222 {line}\n{} {line}\n*.example.org {line}\n@revoked evil.com {line}\nnotthis.com {other_line}\n",
                hashed("secret-host", b"0123456789abcdef0123")
            ),
        )
        .unwrap();
        let files = vec![file, dir.path().join("missing")];
        let names = names_for(&key, &["secret-host", "a.example.org", "nope"], &files);
        assert_eq!(names, ["a.example.org", "gh.local", "github.com", "secret-host"]);
        assert_eq!(names_for(&other, &["secret-host"], &files), ["notthis.com"]);
    }

    #[test]
    fn glob_matches_like_ssh() {
        assert!(glob("*.example.org", "a.b.example.org"));
        assert!(glob("host?", "host1"));
        assert!(!glob("host?", "host12"));
        assert!(!glob("*.example.org", "example.org"));
    }
}
