//! Signing a chain-of-trust document through the agent, so the worker never holds the key and
//! the agent's PIN, touch and purpose policies apply.

use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg, LineEnding, PublicKey, SshSig};

use crate::client::AgentClient;
use crate::token::{KeySelector, Slot};

use super::trust::NAMESPACE;
use super::CotError;

/// An agent identity: the key and the comment (`keytap SERIAL/SLOT` for keytap's keys).
#[derive(Clone, Debug)]
pub struct AgentKey {
    pub key: KeyData,
    pub comment: String,
}

impl AgentKey {
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    pub fn describe(&self) -> String {
        format!("{} {} ({})", self.key.algorithm(), self.fingerprint(), self.comment)
    }

    /// (serial, slot) from keytap's comment.
    fn location(&self) -> Option<(u32, Slot)> {
        let rest = self.comment.strip_prefix("keytap ")?;
        let (serial, slot) = rest.split_once('/')?;
        Some((serial.parse().ok()?, slot.parse().ok()?))
    }
}

fn is_ecdsa(k: &KeyData) -> bool {
    matches!(k.algorithm(), Algorithm::Ecdsa { .. })
}

/// Pick the signing key among the agent's identities.
pub fn select_key(keys: &[AgentKey], selector: Option<&KeySelector>) -> Result<AgentKey, CotError> {
    let usable = |k: &&AgentKey| k.key.algorithm() == Algorithm::Ed25519 || is_ecdsa(&k.key);
    let matches: Vec<&AgentKey> = match selector {
        None => {
            let chosen = keys
                .iter()
                .find(|k| k.key.algorithm() == Algorithm::Ed25519)
                .or_else(|| keys.iter().find(|k| is_ecdsa(&k.key)));
            return chosen.cloned().ok_or(CotError::NoKey(
                "the agent holds no Ed25519 or ECDSA key; create one on the token (e.g. `keytap setup --slot 9c --alg ed25519`)".into(),
            ));
        }
        Some(selector) => keys.iter().filter(|k| selector.matches(k.location(), &k.fingerprint())).collect(),
    };
    match matches.as_slice() {
        [] => Err(CotError::NoKey(format!(
            "no agent key matches {}; list the keys with `keytap list`",
            selector.map(ToString::to_string).unwrap_or_default()
        ))),
        [one] if usable(one) => Ok((*one).clone()),
        [one] => Err(CotError::NoKey(format!(
            "{} is a {} key; chain of trust needs Ed25519 (Taskcluster .sig) or ECDSA (SSHSIG); pick another with --key",
            one.comment,
            one.key.algorithm()
        ))),
        many => Err(CotError::NoKey(format!(
            "{} agent keys match ({}); name one as SERIAL/SLOT or by SHA256 fingerprint",
            many.len(),
            many.iter().map(|k| k.comment.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The agent's keys.
pub fn agent_keys(client: &mut AgentClient) -> Result<Vec<AgentKey>, CotError> {
    Ok(client
        .identities()?
        .into_iter()
        .map(|(cred, comment)| {
            let key = match cred {
                ssh_agent_lib::proto::PublicCredential::Key(k) => k,
                ssh_agent_lib::proto::PublicCredential::Cert(c) => c.public_key().clone(),
            };
            AgentKey { key, comment }
        })
        .collect())
}

/// A detached signature ready to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignedOutput {
    /// `chain-of-trust.json.sig`.
    RawEd25519(Vec<u8>),
    /// `chain-of-trust.json.sshsig` (armored).
    SshSig(String),
}

impl SignedOutput {
    pub fn extension(&self) -> &'static str {
        match self {
            SignedOutput::RawEd25519(_) => "sig",
            SignedOutput::SshSig(_) => "sshsig",
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            SignedOutput::RawEd25519(b) => b,
            SignedOutput::SshSig(s) => s.as_bytes(),
        }
    }
}

/// Have the agent sign `document` with `key`, then check the result before anything is written.
pub fn sign_document(client: &mut AgentClient, key: &AgentKey, document: &[u8]) -> Result<SignedOutput, CotError> {
    let refused = |e: crate::client::ClientError| match e {
        crate::client::ClientError::Refused => CotError::AgentRefused(key.describe()),
        other => CotError::Agent(other),
    };
    if key.key.algorithm() == Algorithm::Ed25519 {
        // An ssh-ed25519 agent signature's blob is the raw 64-byte Ed25519 signature over the data.
        let sig = client.sign(&key.key, document, 0).map_err(refused)?;
        if sig.algorithm() != Algorithm::Ed25519 || sig.as_bytes().len() != 64 {
            return Err(CotError::BadSignature(format!("the agent answered with a {} signature of {} bytes", sig.algorithm(), sig.as_bytes().len())));
        }
        let ed = key.key.ed25519().expect("checked the algorithm");
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&ed.0).map_err(|e| CotError::BadSignature(e.to_string()))?;
        let raw: [u8; 64] = sig.as_bytes().try_into().expect("checked the length");
        vk.verify_strict(document, &ed25519_dalek::Signature::from_bytes(&raw))
            .map_err(|_| CotError::BadSignature("the agent's Ed25519 signature does not verify".into()))?;
        return Ok(SignedOutput::RawEd25519(raw.to_vec()));
    }
    if is_ecdsa(&key.key) {
        let data = SshSig::signed_data(NAMESPACE, HashAlg::Sha512, document).map_err(|e| CotError::BadSignature(e.to_string()))?;
        let sig = client.sign(&key.key, &data, 0).map_err(refused)?;
        let sshsig = SshSig::new(key.key.clone(), NAMESPACE, HashAlg::Sha512, sig).map_err(|e| CotError::BadSignature(e.to_string()))?;
        PublicKey::from(key.key.clone())
            .verify(NAMESPACE, document, &sshsig)
            .map_err(|e| CotError::BadSignature(format!("the agent's SSH signature does not verify: {e}")))?;
        let pem = sshsig.to_pem(LineEnding::LF).map_err(|e| CotError::BadSignature(e.to_string()))?;
        return Ok(SignedOutput::SshSig(pem));
    }
    Err(CotError::NoKey(format!("{} cannot sign a chain of trust; use an Ed25519 or ECDSA key", key.describe())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::PrivateKey;

    fn key(alg: Algorithm, comment: &str) -> AgentKey {
        let k = PrivateKey::random(&mut rand_core::OsRng, alg).unwrap();
        AgentKey { key: k.public_key().key_data().clone(), comment: comment.into() }
    }

    #[test]
    fn selectors_parse() {
        assert_eq!("9c".parse::<KeySelector>(), Ok(KeySelector::Slot(Slot(0x9c))));
        assert_eq!("12345678/9a".parse::<KeySelector>(), Ok(KeySelector::SerialSlot(12345678, Slot(0x9a))));
        assert_eq!("SHA256:abc".parse::<KeySelector>(), Ok(KeySelector::Fingerprint("SHA256:abc".into())));
        assert!("x/9a".parse::<KeySelector>().is_err());
        assert!("zz".parse::<KeySelector>().is_err());
    }

    #[test]
    fn default_prefers_ed25519_then_ecdsa() {
        let p256 = key(Algorithm::Ecdsa { curve: ssh_key::EcdsaCurve::NistP256 }, "keytap 1/9a");
        let ed = key(Algorithm::Ed25519, "keytap 1/9c");
        let keys = vec![p256.clone(), ed.clone()];
        assert_eq!(select_key(&keys, None).unwrap().comment, "keytap 1/9c");
        assert_eq!(select_key(std::slice::from_ref(&p256), None).unwrap().comment, "keytap 1/9a");
        assert!(select_key(&[], None).is_err());
        let sel = KeySelector::Fingerprint(p256.fingerprint());
        assert_eq!(select_key(&keys, Some(&sel)).unwrap().comment, "keytap 1/9a");
        assert_eq!(select_key(&keys, Some(&"1/9c".parse().unwrap())).unwrap().comment, "keytap 1/9c");
        assert!(select_key(&keys, Some(&"2/9c".parse().unwrap())).unwrap_err().to_string().contains("no agent key matches"));
        let twice = vec![ed.clone(), key(Algorithm::Ed25519, "keytap 2/9c")];
        assert!(select_key(&twice, Some(&"9c".parse().unwrap())).unwrap_err().to_string().contains("2 agent keys match"));
    }
}
