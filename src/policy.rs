//! Per-key purpose policy: plain data read from `config.toml` and one pure function, [`decide`].
//!
//! ```toml
//! [defaults]
//! allow = ["ssh-auth", "sshsig:git"]
//!
//! [[key]]
//! match = "slot:9c"           # or "SHA256:<fingerprint>", "serial:1234567/slot:9c", "serial:1234567", "kind:fido", "kind:piv", "kind:upstream"
//! allow = ["sshsig:git"]      # "ssh-auth", "ssh-auth:github.com", "sshsig:<ns>", "sshsig:*", "jws", "raw", "*"
//! forwarded = false           # may a forwarded agent connection use it?
//! confirm = false             # ask the user before each use; "remember:8h": once per program
//! ```

pub mod known_hosts;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use ssh_key::public::KeyData;

use crate::purpose::Purpose;
use crate::token::{KeyInfo, KeyKind, KeySelector, TouchPolicy};

/// One allowed purpose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allow {
    Any,
    /// SSH login to any host.
    SshAuth,
    /// SSH login to a host whose key is listed under this name in known_hosts.
    SshAuthHost(String),
    /// SSHSIG in a namespace (`*` = any).
    SshSig(String),
    /// A JWS signing input (a Buildkite pipeline step).
    Jws,
    Raw,
}

impl std::str::FromStr for Allow {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "*" => Allow::Any,
            "ssh-auth" => Allow::SshAuth,
            "raw" => Allow::Raw,
            "jws" => Allow::Jws,
            _ => {
                if let Some(host) = s.strip_prefix("ssh-auth:").filter(|h| !h.is_empty()) {
                    Allow::SshAuthHost(host.to_string())
                } else if let Some(ns) = s.strip_prefix("sshsig:").filter(|n| !n.is_empty()) {
                    Allow::SshSig(ns.to_string())
                } else {
                    return Err(format!(
                        "unknown purpose {s:?}: use \"ssh-auth\", \"ssh-auth:HOST\", \"sshsig:NAMESPACE\", \"jws\", \"raw\" or \"*\""
                    ));
                }
            }
        })
    }
}

/// Which keys a rule applies to. The config spells them with prefixes (`slot:9c`,
/// `serial:N/slot:9c`, `SHA256:...`) and can also name every key of one token (`serial:N`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyMatch {
    Key(KeySelector),
    Serial(u32),
    /// `kind:fido` (sk keys on FIDO security keys) or `kind:piv` (PIV slot keys).
    Kind(KeyKind),
    /// Every key an upstream agent lists (`kind:upstream`).
    Upstream,
}

impl std::str::FromStr for KeyMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad key match {s:?}: use \"slot:9c\", \"SHA256:<fingerprint>\", \"serial:N\", \"serial:N/slot:9c\", \"kind:fido\", \"kind:piv\" or \"kind:upstream\"");
        match s {
            "kind:fido" => return Ok(KeyMatch::Kind(KeyKind::Fido)),
            "kind:piv" => return Ok(KeyMatch::Kind(KeyKind::Piv)),
            "kind:upstream" => return Ok(KeyMatch::Upstream),
            _ => {}
        }
        if s.starts_with("SHA256:") && s.len() > 7 {
            return Ok(KeyMatch::Key(KeySelector::Fingerprint(s.to_string())));
        }
        if let Some(slot) = s.strip_prefix("slot:") {
            return slot.parse().map(|slot| KeyMatch::Key(KeySelector::Slot(slot))).map_err(|_| bad());
        }
        if let Some(rest) = s.strip_prefix("serial:") {
            return match rest.split_once("/slot:") {
                Some((serial, slot)) => Ok(KeyMatch::Key(KeySelector::SerialSlot(
                    serial.parse().map_err(|_| bad())?,
                    slot.parse().map_err(|_| bad())?,
                ))),
                None => rest.parse().map(KeyMatch::Serial).map_err(|_| bad()),
            };
        }
        Err(bad())
    }
}

impl KeyMatch {
    pub fn matches(&self, key: &KeyInfo) -> bool {
        match self {
            KeyMatch::Key(selector) => selector.matches(key.location(), &key.fingerprint()),
            KeyMatch::Serial(serial) => key.location().is_some_and(|(s, _)| s == *serial),
            KeyMatch::Kind(kind) => key.kind() == *kind,
            KeyMatch::Upstream => false,
        }
    }

    /// Whether the rule covers a key an upstream agent lists (only a fingerprint or
    /// `kind:upstream` can: it has no serial or slot).
    pub fn matches_upstream(&self, fingerprint: &str) -> bool {
        match self {
            KeyMatch::Key(KeySelector::Fingerprint(f)) => f == fingerprint,
            KeyMatch::Upstream => true,
            _ => false,
        }
    }
}

/// The effective policy for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPolicy {
    pub allow: Vec<Allow>,
    /// `None`: forwarded use only when the key needs a touch or a confirmation.
    pub forwarded: Option<bool>,
    pub confirm: bool,
    /// `confirm = "remember:DURATION"`: a yes holds this long for the same program, key,
    /// purpose and destination (never for a forwarded use).
    pub remember: Option<std::time::Duration>,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        KeyPolicy { allow: vec![Allow::Any], forwarded: None, confirm: false, remember: None }
    }
}

/// A parsed configuration.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    defaults: KeyPolicy,
    rules: Vec<(KeyMatch, PartialPolicy)>,
    /// known_hosts files for `ssh-auth:HOST` rules.
    pub known_hosts: Vec<PathBuf>,
    /// Sockets of other agents whose keys keytap serves after its own (`upstream = [...]`).
    pub upstream: Vec<PathBuf>,
    /// `list_by_destination = false` turns off destination-aware key lists (None: on).
    list_by_destination: Option<bool>,
}

#[derive(Clone, Debug, Default)]
struct PartialPolicy {
    allow: Option<Vec<Allow>>,
    forwarded: Option<bool>,
    confirm: Option<Confirm>,
}

/// A `confirm` setting: ask or not, and how long a yes is remembered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Confirm {
    ask: bool,
    remember: Option<std::time::Duration>,
}

/// `confirm` as written: `true`/`false` or `"remember:DURATION"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ConfirmField {
    Flag(bool),
    Text(String),
}

impl ConfirmField {
    fn parse(field: toml::Spanned<ConfirmField>, at: &dyn Fn(std::ops::Range<usize>, String) -> PolicyError) -> Result<Confirm, PolicyError> {
        let span = field.span();
        match field.into_inner() {
            ConfirmField::Flag(ask) => Ok(Confirm { ask, remember: None }),
            ConfirmField::Text(text) => {
                let bad = || at(span.clone(), format!("confirm = {text:?}: use true, false or \"remember:DURATION\" (for example \"remember:8h\")"));
                let duration = text.strip_prefix("remember:").ok_or_else(bad)?;
                let duration = humantime::parse_duration(duration).map_err(|_| bad())?;
                if duration.is_zero() {
                    return Err(bad());
                }
                Ok(Confirm { ask: true, remember: Some(duration) })
            }
        }
    }
}

impl Policy {
    /// The policy for a key: the first matching `[[key]]` rule over `[defaults]`.
    pub fn for_key(&self, key: &KeyInfo) -> KeyPolicy {
        self.first_match(|m| m.matches(key))
    }

    /// The policy for a key an upstream agent lists: the first rule naming its fingerprint
    /// or `kind:upstream`, over `[defaults]`.
    pub fn for_upstream(&self, fingerprint: &str) -> KeyPolicy {
        self.first_match(|m| m.matches_upstream(fingerprint))
    }

    /// Every host an `ssh-auth:HOST` rule names: the names to look a destination up under.
    pub fn ssh_auth_hosts(&self) -> Vec<String> {
        let rules = self.rules.iter().filter_map(|(_, r)| r.allow.as_ref());
        let mut hosts: Vec<String> = std::iter::once(&self.defaults.allow)
            .chain(rules)
            .flatten()
            .filter_map(|a| match a {
                Allow::SshAuthHost(h) => Some(h.clone()),
                _ => None,
            })
            .collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// Whether a session-bound connection lists only the keys that could log in there.
    pub fn list_by_destination(&self) -> bool {
        self.list_by_destination.unwrap_or(true)
    }

    fn first_match(&self, matches: impl Fn(&KeyMatch) -> bool) -> KeyPolicy {
        let mut policy = self.defaults.clone();
        if let Some((_, rule)) = self.rules.iter().find(|(m, _)| matches(m)) {
            if let Some(allow) = &rule.allow {
                policy.allow = allow.clone();
            }
            if rule.forwarded.is_some() {
                policy.forwarded = rule.forwarded;
            }
            if let Some(confirm) = rule.confirm {
                policy.confirm = confirm.ask;
                policy.remember = confirm.remember;
            }
        }
        policy
    }

    /// Read a config file; a missing default file is the built-in policy.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Read(path.to_path_buf(), e))?;
        Policy::parse(&text).map_err(|e| e.in_file(path))
    }

    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            PolicyError::Invalid { file: None, line, message: e.message().to_string() }
        })?;
        let at = |span: std::ops::Range<usize>, message: String| PolicyError::Invalid { file: None, line: Some(line_of(text, span.start)), message };
        let mut policy = Policy::default();
        if let Some(d) = file.defaults {
            let partial = d.into_partial(&at)?;
            if let Some(allow) = partial.allow {
                policy.defaults.allow = allow;
            }
            policy.defaults.forwarded = partial.forwarded;
            let confirm = partial.confirm.unwrap_or(Confirm { ask: false, remember: None });
            policy.defaults.confirm = confirm.ask;
            policy.defaults.remember = confirm.remember;
        }
        for rule in file.key {
            let key_match = rule.r#match.get_ref().parse::<KeyMatch>().map_err(|m| at(rule.r#match.span(), m))?;
            let fields = RuleFields { allow: rule.allow, forwarded: rule.forwarded, confirm: rule.confirm };
            policy.rules.push((key_match, fields.into_partial(&at)?));
        }
        policy.known_hosts = match file.known_hosts {
            Some(paths) => paths.into_iter().map(expand_home).collect(),
            None => default_known_hosts(),
        };
        policy.upstream = file.upstream.unwrap_or_default().into_iter().map(expand_home).collect();
        policy.list_by_destination = file.list_by_destination;
        Ok(policy)
    }
}

fn expand_home(p: String) -> PathBuf {
    match p.strip_prefix("~/") {
        Some(rest) => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(rest),
        None => PathBuf::from(p),
    }
}

fn default_known_hosts() -> Vec<PathBuf> {
    vec![expand_home("~/.ssh/known_hosts".into()), PathBuf::from("/etc/ssh/ssh_known_hosts")]
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{}{}: {message}; see docs/policy.md", file.as_ref().map(|f| f.display().to_string()).unwrap_or_else(|| "config".into()), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid { file: Option<PathBuf>, line: Option<usize>, message: String },
}

impl PolicyError {
    fn in_file(self, path: &Path) -> PolicyError {
        match self {
            PolicyError::Invalid { line, message, .. } => PolicyError::Invalid { file: Some(path.to_path_buf()), line, message },
            other => other,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    defaults: Option<RuleFields>,
    #[serde(default)]
    key: Vec<KeyRule>,
    known_hosts: Option<Vec<String>>,
    upstream: Option<Vec<String>>,
    list_by_destination: Option<bool>,
}

/// A `[[key]]` table: `match` plus the same fields as `[defaults]` (spans survive no flatten).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRule {
    r#match: toml::Spanned<String>,
    allow: Option<Vec<toml::Spanned<String>>>,
    forwarded: Option<bool>,
    confirm: Option<toml::Spanned<ConfirmField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFields {
    allow: Option<Vec<toml::Spanned<String>>>,
    forwarded: Option<bool>,
    confirm: Option<toml::Spanned<ConfirmField>>,
}

impl RuleFields {
    fn into_partial(self, at: &dyn Fn(std::ops::Range<usize>, String) -> PolicyError) -> Result<PartialPolicy, PolicyError> {
        let allow = match self.allow {
            None => None,
            Some(list) => Some(
                list.into_iter()
                    .map(|s| s.get_ref().parse::<Allow>().map_err(|m| at(s.span(), m)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let confirm = self.confirm.map(|c| ConfirmField::parse(c, at)).transpose()?;
        Ok(PartialPolicy { allow, forwarded: self.forwarded, confirm })
    }
}

/// Everything [`decide`] looks at about one request.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub purpose: &'a Purpose,
    /// The connection was bound with is_forwarding (a forwarded agent).
    pub forwarded: bool,
    /// The destination's host key, from session-bind or the hostbound request.
    pub host_key: Option<&'a KeyData>,
    /// The names known_hosts gives that host key.
    pub host_names: &'a [String],
    pub touch: TouchPolicy,
}

/// What to do with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Ask the user first.
    Confirm,
    Deny(String),
}

/// Decide one request against a key's policy. Pure.
pub fn decide(request: &Request, policy: &KeyPolicy) -> Decision {
    if let Err(reason) = purpose_allowed(request, policy) {
        return Decision::Deny(reason);
    }
    if request.forwarded {
        match policy.forwarded {
            Some(false) => return Decision::Deny("key may not be used through a forwarded agent (forwarded = false)".into()),
            Some(true) => {}
            None => {
                // Out of the box a forwarded socket never uses a key silently.
                if request.touch != TouchPolicy::Always && !policy.confirm {
                    return Decision::Confirm;
                }
            }
        }
    }
    if policy.confirm {
        Decision::Confirm
    } else {
        Decision::Allow
    }
}

/// Whether `decide` could allow a login with a key of this policy to a destination known as
/// `host_names`, on a connection that is (or is not) forwarded: for destination-aware key
/// lists. A confirmation still counts as possible. Pure.
pub fn could_log_in(policy: &KeyPolicy, forwarded: bool, host_names: &[String]) -> bool {
    let purpose = Purpose::SshAuth { user: String::new(), method: "publickey-hostbound-v00@openssh.com".into(), session_id: Vec::new(), host_key: None };
    let request = Request { purpose: &purpose, forwarded, host_key: None, host_names, touch: TouchPolicy::Never };
    !matches!(decide(&request, policy), Decision::Deny(_))
}

fn purpose_allowed(request: &Request, policy: &KeyPolicy) -> Result<(), String> {
    let mut host_rules = Vec::new();
    for allow in &policy.allow {
        match (allow, request.purpose) {
            (Allow::Any, _) => return Ok(()),
            (Allow::SshAuth, Purpose::SshAuth { .. }) => return Ok(()),
            (Allow::SshAuthHost(host), Purpose::SshAuth { .. }) => {
                if request.host_names.iter().any(|n| n == host) {
                    return Ok(());
                }
                host_rules.push(host.as_str());
            }
            (Allow::SshSig(ns), Purpose::SshSig { namespace, .. }) if ns == "*" || ns == namespace => return Ok(()),
            (Allow::Raw, Purpose::Raw) => return Ok(()),
            (Allow::Jws, Purpose::Jws(_)) => return Ok(()),
            _ => {}
        }
    }
    if !host_rules.is_empty() {
        return Err(match request.host_key {
            None => format!(
                "key is allowed ssh-auth only to {} but the destination is unknown (the client sent no session-bind; OpenSSH 8.9+ does)",
                host_rules.join(", ")
            ),
            Some(key) => format!(
                "key is allowed ssh-auth only to {}; host key {} is known as {}",
                host_rules.join(", "),
                key.fingerprint(ssh_key::HashAlg::Sha256),
                if request.host_names.is_empty() { "nothing in known_hosts".to_string() } else { request.host_names.join(", ") }
            ),
        });
    }
    let allowed: Vec<String> = policy.allow.iter().map(allow_name).collect();
    Err(format!("purpose {} is not allowed for this key (allowed: {})", request.purpose.name(), allowed.join(", ")))
}

fn allow_name(a: &Allow) -> String {
    match a {
        Allow::Any => "*".into(),
        Allow::SshAuth => "ssh-auth".into(),
        Allow::SshAuthHost(h) => format!("ssh-auth:{h}"),
        Allow::SshSig(ns) => format!("sshsig:{ns}"),
        Allow::Jws => "jws".into(),
        Allow::Raw => "raw".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{KeyAlgorithm, PinPolicy, Slot};

    fn key(slot: u8, serial: u32) -> KeyInfo {
        let k = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
        KeyInfo {
            serial,
            slot: Slot(slot),
            algorithm: KeyAlgorithm::Ed25519,
            pin_policy: PinPolicy::Once,
            touch_policy: TouchPolicy::Never,
            public_key: k.public_key().key_data().clone(),
            fido: None,
        }
    }

    fn auth() -> Purpose {
        Purpose::SshAuth { user: "git".into(), method: "publickey".into(), session_id: vec![1; 32], host_key: None }
    }

    fn sig(ns: &str) -> Purpose {
        Purpose::SshSig { namespace: ns.into(), hash: "sha512".into() }
    }

    fn req<'a>(purpose: &'a Purpose, forwarded: bool, names: &'a [String], touch: TouchPolicy) -> Request<'a> {
        Request { purpose, forwarded, host_key: None, host_names: names, touch }
    }

    fn policy(allow: &[&str], forwarded: Option<bool>, confirm: bool) -> KeyPolicy {
        KeyPolicy { allow: allow.iter().map(|a| a.parse().unwrap()).collect(), forwarded, confirm, remember: None }
    }

    #[test]
    fn default_policy_allows_everything_locally() {
        let p = KeyPolicy::default();
        for purpose in [auth(), sig("git"), sig("file"), Purpose::Raw] {
            assert_eq!(decide(&req(&purpose, false, &[], TouchPolicy::Never), &p), Decision::Allow);
        }
    }

    #[test]
    fn forwarded_use_is_never_silent_by_default() {
        let p = KeyPolicy::default();
        let a = auth();
        assert_eq!(decide(&req(&a, true, &[], TouchPolicy::Never), &p), Decision::Confirm);
        assert_eq!(decide(&req(&a, true, &[], TouchPolicy::Cached), &p), Decision::Confirm);
        assert_eq!(decide(&req(&a, true, &[], TouchPolicy::Always), &p), Decision::Allow);
        assert_eq!(decide(&req(&a, true, &[], TouchPolicy::Never), &policy(&["*"], None, true)), Decision::Confirm);
        assert_eq!(decide(&req(&a, true, &[], TouchPolicy::Never), &policy(&["*"], Some(true), false)), Decision::Allow);
        assert!(matches!(decide(&req(&a, true, &[], TouchPolicy::Always), &policy(&["*"], Some(false), false)), Decision::Deny(r) if r.contains("forwarded = false")));
        assert_eq!(decide(&req(&a, false, &[], TouchPolicy::Never), &policy(&["*"], Some(false), false)), Decision::Allow);
    }

    #[test]
    fn purposes_are_matched_exactly() {
        let git_only = policy(&["sshsig:git"], None, false);
        assert_eq!(decide(&req(&sig("git"), false, &[], TouchPolicy::Never), &git_only), Decision::Allow);
        let d = decide(&req(&sig("file"), false, &[], TouchPolicy::Never), &git_only);
        assert_eq!(d, Decision::Deny("purpose sshsig:file is not allowed for this key (allowed: sshsig:git)".into()));
        assert!(matches!(decide(&req(&auth(), false, &[], TouchPolicy::Never), &git_only), Decision::Deny(_)));
        assert!(matches!(decide(&req(&Purpose::Raw, false, &[], TouchPolicy::Never), &git_only), Decision::Deny(_)));
        let any_sig = policy(&["sshsig:*"], None, false);
        assert_eq!(decide(&req(&sig("file"), false, &[], TouchPolicy::Never), &any_sig), Decision::Allow);
        let raw = policy(&["raw"], None, false);
        assert_eq!(decide(&req(&Purpose::Raw, false, &[], TouchPolicy::Never), &raw), Decision::Allow);
        assert!(matches!(decide(&req(&sig("git"), false, &[], TouchPolicy::Never), &raw), Decision::Deny(_)));
        // `raw` does not cover a JWS; `jws` covers only that.
        let jws = Purpose::Jws(crate::purpose::JwsInfo { alg: "EdDSA".into(), kid: None, repository: None, command: None });
        assert!(matches!(decide(&req(&jws, false, &[], TouchPolicy::Never), &raw), Decision::Deny(r) if r == "purpose jws is not allowed for this key (allowed: raw)"));
        let jws_only = policy(&["jws"], None, false);
        assert_eq!(decide(&req(&jws, false, &[], TouchPolicy::Never), &jws_only), Decision::Allow);
        assert!(matches!(decide(&req(&Purpose::Raw, false, &[], TouchPolicy::Never), &jws_only), Decision::Deny(_)));
        assert!(matches!(decide(&req(&auth(), false, &[], TouchPolicy::Never), &jws_only), Decision::Deny(_)));
        let auth_only = policy(&["ssh-auth"], None, true);
        assert_eq!(decide(&req(&auth(), false, &[], TouchPolicy::Never), &auth_only), Decision::Confirm);
    }

    #[test]
    fn host_restricted_auth_needs_a_known_name() {
        let p = policy(&["ssh-auth:github.com"], None, false);
        let a = auth();
        let names = vec!["github.com".to_string()];
        assert_eq!(decide(&req(&a, false, &names, TouchPolicy::Never), &p), Decision::Allow);
        let other = vec!["gitlab.com".to_string()];
        let hk = key(0x9a, 1).public_key;
        let mut r = req(&a, false, &other, TouchPolicy::Never);
        r.host_key = Some(&hk);
        assert!(matches!(decide(&r, &p), Decision::Deny(m) if m.contains("known as gitlab.com")));
        assert!(matches!(decide(&req(&a, false, &[], TouchPolicy::Never), &p), Decision::Deny(m) if m.contains("destination is unknown")));
        assert!(matches!(decide(&req(&sig("git"), false, &names, TouchPolicy::Never), &p), Decision::Deny(_)));
    }

    #[test]
    fn config_rules_override_defaults_first_match_wins() {
        let policy = Policy::parse(
            r#"
known_hosts = ["/tmp/kh"]
[defaults]
allow = ["ssh-auth"]
forwarded = false

[[key]]
match = "serial:111/slot:9c"
allow = ["sshsig:git"]
confirm = true

[[key]]
match = "slot:9c"
allow = ["raw"]
"#,
        )
        .unwrap();
        assert_eq!(policy.known_hosts, vec![PathBuf::from("/tmp/kh")]);
        let p = policy.for_key(&key(0x9c, 111));
        assert_eq!(p, KeyPolicy { allow: vec![Allow::SshSig("git".into())], forwarded: Some(false), confirm: true, remember: None });
        assert_eq!(policy.for_key(&key(0x9c, 222)).allow, vec![Allow::Raw]);
        assert_eq!(policy.for_key(&key(0x9a, 111)).allow, vec![Allow::SshAuth]);
        let k = key(0x9d, 5);
        let by_fp = Policy::parse(&format!("[[key]]\nmatch = \"{}\"\nallow = [\"raw\"]\n", k.fingerprint())).unwrap();
        assert_eq!(by_fp.for_key(&k).allow, vec![Allow::Raw]);
        assert_eq!(by_fp.for_key(&key(0x9d, 5)).allow, vec![Allow::Any]);
        assert_eq!(Policy::parse("").unwrap().for_key(&k), KeyPolicy::default());
        let by_kind = Policy::parse("[[key]]\nmatch = \"kind:fido\"\nallow = [\"sshsig:git\"]\n").unwrap();
        let mut sk = key(0x9a, 0);
        sk.fido = Some(crate::token::FidoKeyInfo { application: "ssh:".into(), flags: 1, comment: String::new() });
        assert_eq!(by_kind.for_key(&sk).allow, vec![Allow::SshSig("git".into())]);
        assert_eq!(by_kind.for_key(&key(0x9a, 0)).allow, vec![Allow::Any], "a PIV key is not kind:fido");
        let slot_rule = Policy::parse("[[key]]\nmatch = \"slot:9a\"\nallow = [\"raw\"]\n").unwrap();
        assert_eq!(slot_rule.for_key(&sk).allow, vec![Allow::Any], "an sk key sits in no slot");
        let by_serial = Policy::parse("[[key]]\nmatch = \"serial:5\"\nallow = [\"raw\"]\n").unwrap();
        assert_eq!(by_serial.for_key(&key(0x9a, 5)).allow, vec![Allow::Raw]);
        assert_eq!(by_serial.for_key(&key(0x9d, 5)).allow, vec![Allow::Raw]);
        assert_eq!(by_serial.for_key(&key(0x9a, 6)).allow, vec![Allow::Any]);
    }

    #[test]
    fn upstream_keys_match_by_fingerprint_or_kind_only() {
        let k = key(0x9a, 5);
        let policy = Policy::parse(&format!(
            "upstream = [\"/run/a.sock\", \"~/b.sock\"]\nlist_by_destination = false\n[[key]]\nmatch = \"{}\"\nallow = [\"raw\"]\n\n[[key]]\nmatch = \"slot:9a\"\nallow = [\"ssh-auth\"]\n\n[[key]]\nmatch = \"kind:upstream\"\nallow = [\"sshsig:git\"]\n",
            k.fingerprint()
        ))
        .unwrap();
        assert_eq!(policy.upstream[0], PathBuf::from("/run/a.sock"));
        assert!(policy.upstream[1].ends_with("b.sock") && policy.upstream[1].is_absolute());
        assert!(!policy.list_by_destination());
        assert!(Policy::parse("").unwrap().list_by_destination());
        assert_eq!(policy.for_upstream(&k.fingerprint()).allow, vec![Allow::Raw]);
        // A slot rule never covers an upstream key; kind:upstream never covers a token key.
        assert_eq!(policy.for_upstream("SHA256:other").allow, vec![Allow::SshSig("git".into())]);
        assert_eq!(policy.for_key(&key(0x9a, 6)).allow, vec![Allow::SshAuth]);
        assert_eq!(policy.for_key(&key(0x9c, 6)).allow, vec![Allow::Any]);
    }

    #[test]
    fn a_login_is_possible_only_where_purpose_host_and_forwarding_allow_it() {
        let names = vec!["build.example".to_string()];
        assert!(could_log_in(&KeyPolicy::default(), false, &[]));
        assert!(could_log_in(&policy(&["ssh-auth"], None, true), false, &[]));
        assert!(could_log_in(&policy(&["ssh-auth:build.example"], None, false), false, &names));
        assert!(!could_log_in(&policy(&["ssh-auth:build.example"], None, false), false, &["other.example".to_string()]));
        assert!(!could_log_in(&policy(&["ssh-auth:build.example"], None, false), false, &[]));
        assert!(!could_log_in(&policy(&["sshsig:git"], None, false), false, &names));
        // Forwarded: never with forwarded = false; by default only with a confirmation, which counts.
        assert!(!could_log_in(&policy(&["*"], Some(false), false), true, &names));
        assert!(could_log_in(&policy(&["*"], None, false), true, &names));
        let p = Policy::parse("[defaults]\nallow = [\"ssh-auth:a.example\"]\n[[key]]\nmatch = \"slot:9c\"\nallow = [\"ssh-auth:b.example\", \"ssh-auth:a.example\"]\n").unwrap();
        assert_eq!(p.ssh_auth_hosts(), ["a.example", "b.example"]);
    }

    #[test]
    fn confirm_can_remember_a_yes_for_a_while() {
        let p = Policy::parse("[defaults]\nconfirm = \"remember:8h\"\n[[key]]\nmatch = \"slot:9c\"\nconfirm = true\n").unwrap();
        let d = p.for_key(&key(0x9a, 1));
        assert!(d.confirm);
        assert_eq!(d.remember, Some(std::time::Duration::from_secs(8 * 3600)));
        let c = p.for_key(&key(0x9c, 1));
        assert_eq!((c.confirm, c.remember), (true, None));
        for bad in ["\"remember\"", "\"remember:soon\"", "\"remember:0s\"", "\"yes\""] {
            let err = Policy::parse(&format!("[defaults]\nconfirm = {bad}\n")).unwrap_err().to_string();
            assert!(err.contains("line 2") && err.contains("remember:DURATION"), "{err}");
        }
    }

    #[test]
    fn config_errors_name_the_line() {
        let cases = [
            ("[[key]]\nmatch = \"slot:9c\"\nallow = [\"ssh-auth\", \"sshsig\"]\n", "config line 3: unknown purpose \"sshsig\""),
            ("[[key]]\n\nmatch = \"slot:zz\"\n", "config line 3: bad key match \"slot:zz\""),
            ("[defaults]\nconfrim = true\n", "config line 2: unknown field `confrim`"),
            ("[[key]]\nallow = [\"raw\"]\n", "config line 1: missing field `match`"),
            ("[defaults]\nforwarded = \"yes\"\n", "config line 2: invalid type"),
        ];
        for (text, want) in cases {
            let err = Policy::parse(text).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
            assert!(err.ends_with("see docs/policy.md"), "{err}");
        }
    }
}
