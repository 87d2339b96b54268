//! `session-bind@openssh.com` and what it means for a connection, as OpenSSH's agent does it.
//!
//! ssh binds each agent connection to the SSH session it authenticates or forwards: the
//! server's host key, the session id and the server's signature over it. Rules (OpenSSH 9.6):
//! - a binding is recorded only when the host key's signature over the session id verifies;
//!   plain keys and host certificates of every type OpenSSH sends are read (`host_key`);
//! - once any session-bind was tried the connection is remote: the local-only extensions
//!   are refused on it; if one failed or was malformed, every later signature is refused too
//!   (an unbound-after-failure connection could otherwise pass for a local one);
//! - no binding after one for authentication, at most 16, a session id never rebound to
//!   another host key;
//! - a login signature on a bound connection must be for the last bound session; if that
//!   binding is for forwarding, the request is signing on the forwarding hop and is refused;
//!   past a forwarding hop it must be hostbound and name the last bound host key.

use ssh_encoding::Decode;

use crate::host_key::HostKey;
use crate::purpose::Purpose;

/// OpenSSH keeps at most this many session bindings per connection.
const MAX_BINDINGS: usize = 16;

/// One decoded session-bind request (signature not yet checked).
#[derive(Clone, Debug)]
pub struct SessionBind {
    pub host_key: HostKey,
    pub session_id: Vec<u8>,
    pub signature: Vec<u8>,
    pub is_forwarding: bool,
}

impl SessionBind {
    /// Decode `string hostkey, string session_id, string signature, bool is_forwarding`.
    /// The host key may be a certificate; any non-empty session id is taken, as OpenSSH does.
    pub fn parse(details: &[u8]) -> Result<SessionBind, String> {
        let r = &mut &details[..];
        let host_key = Vec::<u8>::decode(r).map_err(|e| format!("malformed: host key: {e}"))?;
        let session_id = Vec::<u8>::decode(r).map_err(|e| format!("malformed: session id: {e}"))?;
        let signature = Vec::<u8>::decode(r).map_err(|e| format!("malformed: signature: {e}"))?;
        let is_forwarding = match u8::decode(r).map_err(|e| format!("malformed: forwarding flag: {e}"))? {
            0 => false,
            1 => true,
            other => return Err(format!("malformed: forwarding flag {other}")),
        };
        if !r.is_empty() {
            return Err("malformed: trailing bytes".into());
        }
        if session_id.is_empty() {
            return Err("malformed: empty session id".into());
        }
        let host_key = HostKey::from_blob(&host_key).map_err(|e| format!("malformed: {e}"))?;
        Ok(SessionBind { host_key, session_id, signature, is_forwarding })
    }

    /// Check the host key's signature over the session id.
    pub fn verify(&self) -> Result<(), String> {
        self.host_key.verify(&self.session_id, &self.signature).map_err(|e| format!("host key signature does not verify: {e}"))
    }
}

/// One recorded binding.
#[derive(Clone, Debug)]
pub struct Binding {
    pub host_key: HostKey,
    pub session_id: Vec<u8>,
    pub forwarded: bool,
}

/// The session bindings of one connection.
#[derive(Debug, Default)]
pub struct Bindings {
    list: Vec<Binding>,
    /// Some session-bind was tried (ssh or a forwarded peer is on the other end).
    attempted: bool,
    /// Some session-bind failed or was malformed: nothing is signed here any more.
    failed: bool,
}

impl Bindings {
    /// Record a session-bind; any failure poisons the connection for good.
    pub fn bind(&mut self, details: &[u8]) -> Result<&Binding, String> {
        self.attempted = true;
        match self.try_bind(details) {
            Ok(index) => Ok(&self.list[index]),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn try_bind(&mut self, details: &[u8]) -> Result<usize, String> {
        let bind = SessionBind::parse(details)?;
        bind.verify()?;
        for (index, existing) in self.list.iter().enumerate() {
            if !existing.forwarded {
                return Err("connection already bound for authentication".into());
            }
            if existing.session_id == bind.session_id {
                return if existing.host_key == bind.host_key {
                    Ok(index)
                } else {
                    Err("session id already bound to a different host key".into())
                };
            }
        }
        if self.list.len() >= MAX_BINDINGS {
            return Err("too many session bindings".into());
        }
        self.list.push(Binding { host_key: bind.host_key, session_id: bind.session_id, forwarded: bind.is_forwarding });
        Ok(self.list.len() - 1)
    }

    /// Some binding on this connection is for forwarding, or a bind failed: the peer may be
    /// a remote host, so policy treats it as forwarded.
    pub fn forwarded(&self) -> bool {
        self.failed || self.list.iter().any(|b| b.forwarded)
    }

    /// ssh or a forwarded peer is on the other end: local-only extensions are refused.
    pub fn remote(&self) -> bool {
        self.attempted
    }

    pub fn poisoned(&self) -> bool {
        self.failed
    }

    pub fn last(&self) -> Option<&Binding> {
        self.list.last()
    }

    /// May this connection sign for `purpose`? For a login, the destination host key: the last
    /// bound (verified) one on a bound connection, the one the request names on an unbound
    /// local connection.
    pub fn destination(&self, purpose: &Purpose) -> Result<Option<HostKey>, String> {
        if self.failed {
            return Err("a session-bind on this connection failed, so it may come from a remote host: nothing is signed on it (reconnect)".into());
        }
        let Purpose::SshAuth { session_id, host_key, .. } = purpose else { return Ok(None) };
        let Some(last) = self.list.last() else { return Ok(host_key.clone()) };
        if last.forwarded {
            return Err("tried to sign on forwarding hop: a login through a forwarded agent must be bound to its own session (use an OpenSSH 8.9+ client on the remote host)".into());
        }
        if *session_id != last.session_id {
            return Err("userauth request is for a different session than the one bound to this connection".into());
        }
        match host_key {
            None if self.list.len() > 1 => Err("userauth request through a forwarded agent does not name its destination host key (not hostbound)".into()),
            Some(named) if named != &last.host_key => Err("hostbound userauth names a different host key than the bound session".into()),
            _ => Ok(Some(last.host_key.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_encoding::Encode;
    use ssh_key::{Algorithm, PrivateKey};

    fn host() -> PrivateKey {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    fn blob(key: &PrivateKey) -> Vec<u8> {
        let mut b = Vec::new();
        key.public_key().key_data().encode(&mut b).unwrap();
        b
    }

    fn bind_details(key: &PrivateKey, session_id: &[u8], forwarding: bool) -> Vec<u8> {
        let signature: ssh_key::Signature = signature::Signer::sign(key, session_id);
        let mut sig = Vec::new();
        signature.encode(&mut sig).unwrap();
        let mut d = Vec::new();
        blob(key).encode(&mut d).unwrap();
        session_id.encode(&mut d).unwrap();
        sig.encode(&mut d).unwrap();
        d.push(forwarding as u8);
        d
    }

    fn login(session_id: &[u8], host_key: Option<&PrivateKey>) -> Purpose {
        Purpose::SshAuth {
            user: "alice".into(),
            method: "publickey".into(),
            session_id: session_id.to_vec(),
            host_key: host_key.map(|k| HostKey::from_blob(&blob(k)).unwrap()),
        }
    }

    #[test]
    fn a_verified_bind_for_authentication_names_the_destination() {
        let h = host();
        let mut b = Bindings::default();
        b.bind(&bind_details(&h, &[1; 32], false)).unwrap();
        assert!(b.remote() && !b.forwarded() && !b.poisoned());
        let dest = b.destination(&login(&[1; 32], None)).unwrap().unwrap();
        assert_eq!(dest.key(), h.public_key().key_data());
        assert_eq!(b.destination(&login(&[1; 32], Some(&h))).unwrap().unwrap(), dest);
        assert!(b.destination(&login(&[2; 32], None)).unwrap_err().contains("different session"));
        assert!(b.destination(&login(&[1; 32], Some(&host()))).unwrap_err().contains("different host key"));
        assert_eq!(b.destination(&Purpose::Raw), Ok(None));
        // No second binding after one for authentication.
        assert!(b.bind(&bind_details(&host(), &[3; 32], false)).unwrap_err().contains("already bound"));
        assert!(b.poisoned());
    }

    #[test]
    fn any_failed_bind_poisons_the_connection() {
        let h = host();
        let mut bad_sig = bind_details(&h, &[1; 32], false);
        let at = bad_sig.len() - 2;
        bad_sig[at] ^= 1;
        let mut trailing = bind_details(&h, &[1; 32], false);
        trailing.push(0);
        let empty_sid = bind_details(&h, &[], false);
        let garbage = b"\x00\x00\x00\x0bssh-ed25519".to_vec();
        for details in [bad_sig, trailing, empty_sid, garbage] {
            let mut b = Bindings::default();
            assert!(b.bind(&details).is_err());
            assert!(b.poisoned() && b.forwarded() && b.remote());
            for purpose in [login(&[1; 32], Some(&h)), Purpose::Raw, Purpose::SshSig { namespace: "git".into(), hash: "sha512".into() }] {
                assert!(b.destination(&purpose).unwrap_err().contains("session-bind on this connection failed"));
            }
            // A later good bind does not make it local again.
            b.bind(&bind_details(&h, &[1; 32], false)).unwrap();
            assert!(b.destination(&login(&[1; 32], None)).is_err());
        }
    }

    #[test]
    fn signing_on_the_forwarding_hop_is_refused() {
        let (jump, other) = (host(), host());
        let mut b = Bindings::default();
        b.bind(&bind_details(&jump, &[1; 32], true)).unwrap();
        assert!(b.forwarded());
        // A plain publickey request (paramiko on the hop) and a hostbound one for the hop.
        for purpose in [login(&[1; 32], None), login(&[1; 32], Some(&jump)), login(&[9; 32], None)] {
            assert!(b.destination(&purpose).unwrap_err().starts_with("tried to sign on forwarding hop"));
        }
        // Non-login signatures are for policy to decide (forwarded).
        assert_eq!(b.destination(&Purpose::Raw), Ok(None));

        // ssh on the hop binds its own session: then it must be hostbound to that host.
        b.bind(&bind_details(&other, &[2; 32], false)).unwrap();
        let dest = b.destination(&login(&[2; 32], Some(&other))).unwrap().unwrap();
        assert_eq!(dest.key(), other.public_key().key_data());
        assert!(b.destination(&login(&[2; 32], None)).unwrap_err().contains("does not name its destination"));
        assert!(b.destination(&login(&[2; 32], Some(&jump))).unwrap_err().contains("different host key"));
        assert!(b.destination(&login(&[1; 32], Some(&other))).unwrap_err().contains("different session"));
    }

    #[test]
    fn a_replayed_binding_only_covers_its_own_session() {
        let (jump, target) = (host(), host());
        let replayed = bind_details(&target, &[5; 32], false);
        let mut b = Bindings::default();
        b.bind(&bind_details(&jump, &[1; 32], true)).unwrap();
        b.bind(&replayed).unwrap();
        // A login for any other session (to anywhere) is not "to target".
        assert!(b.destination(&login(&[6; 32], Some(&target))).is_err());
        // Rebinding the same session id to another key is refused.
        let mut c = Bindings::default();
        c.bind(&bind_details(&jump, &[1; 32], true)).unwrap();
        assert!(c.bind(&bind_details(&target, &[1; 32], true)).unwrap_err().contains("different host key"));
    }

    #[test]
    fn at_most_sixteen_bindings_and_any_session_id_length() {
        let mut b = Bindings::default();
        for i in 0..16u8 {
            b.bind(&bind_details(&host(), &vec![i; 1 + i as usize * 20], true)).unwrap();
        }
        assert!(b.bind(&bind_details(&host(), &[99; 32], true)).unwrap_err().contains("too many"));
    }
}
