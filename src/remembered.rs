//! Remembered approvals (`confirm = "remember:DURATION"`): after one yes, the same program may
//! use the same key for the same purpose and destination without being asked again, until the
//! duration passes, the agent is locked, SIGUSR1, or `keytap approvals clear`.
//!
//! "The same program" is its executable and its place in the process tree: every ancestor by
//! pid, start time and executable. Another `ssh` started from the same shell is the same
//! program; the same `ssh` binary started from another terminal, or through a new wrapper
//! process, is not. Forwarded uses are never remembered (the agent's caller decides that).

pub mod command;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::peer::{Ancestor, PeerInfo};

/// The agent extension `keytap approvals` speaks: details `list` or `clear`, answer JSON.
pub const EXT_APPROVALS: &str = "keytap-approvals@keytap.dev";

/// At most this many approvals are kept; the oldest goes first.
pub const MAX_REMEMBERED: usize = 256;

/// A program, as remembered approvals tell programs apart.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Program {
    pub exe: Option<PathBuf>,
    pub ancestors: Vec<Ancestor>,
    /// For people: `ssh <- bash <- tmux`.
    pub chain: String,
}

impl Program {
    /// Reads /proc: call it off the event loop.
    pub fn of(peer: &PeerInfo) -> Program {
        let ancestors = peer.pid.map(|pid| crate::peer::ancestry(pid, 16)).unwrap_or_default();
        Program { exe: peer.exe.clone(), ancestors, chain: peer.chain() }
    }

    /// Without a known executable there is nothing to recognise the program by.
    fn known(&self) -> bool {
        self.exe.is_some()
    }
}

/// What one yes covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub program: Program,
    /// The key's SHA256 fingerprint.
    pub key: String,
    /// `ssh-auth`, `sshsig:git`, ...
    pub purpose: String,
    /// For a login, the destination host key's fingerprint; empty otherwise.
    pub destination: String,
}

/// What `keytap approvals` shows.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Listed {
    pub program: String,
    pub key: String,
    pub purpose: String,
    pub destination: String,
    pub expires_in_secs: u64,
}

/// The agent's remembered approvals.
#[derive(Default)]
pub struct Approvals {
    remembered: Mutex<Vec<(Approval, Instant)>>,
}

impl Approvals {
    /// Whether this use was approved and the approval still holds.
    pub fn recalls(&self, approval: &Approval, now: Instant) -> bool {
        let mut remembered = self.remembered.lock().expect("approvals lock");
        remembered.retain(|(_, until)| *until > now);
        approval.program.known() && remembered.iter().any(|(a, _)| a == approval)
    }

    /// Remember a yes for `duration` from `now`.
    pub fn remember(&self, approval: Approval, duration: Duration, now: Instant) {
        if !approval.program.known() {
            return;
        }
        let mut remembered = self.remembered.lock().expect("approvals lock");
        remembered.retain(|(a, until)| *until > now && *a != approval);
        if remembered.len() >= MAX_REMEMBERED {
            remembered.remove(0);
        }
        remembered.push((approval, now + duration));
    }

    /// Forget everything; how many were forgotten.
    pub fn clear(&self) -> usize {
        let mut remembered = self.remembered.lock().expect("approvals lock");
        let n = remembered.len();
        remembered.clear();
        n
    }

    pub fn list(&self, now: Instant) -> Vec<Listed> {
        let mut remembered = self.remembered.lock().expect("approvals lock");
        remembered.retain(|(_, until)| *until > now);
        remembered
            .iter()
            .map(|(a, until)| Listed {
                program: a.program.chain.clone(),
                key: a.key.clone(),
                purpose: a.purpose.clone(),
                destination: a.destination.clone(),
                expires_in_secs: until.duration_since(now).as_secs(),
            })
            .collect()
    }
}

/// The extension's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub approvals: Vec<Listed>,
    pub cleared: usize,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(exe: &str, parent: i32) -> Program {
        Program { exe: Some(exe.into()), ancestors: vec![Ancestor { pid: parent, start: 5, exe: Some("/bin/bash".into()) }], chain: exe.into() }
    }

    fn approval(program: Program, key: &str, purpose: &str) -> Approval {
        Approval { program, key: key.into(), purpose: purpose.into(), destination: "SHA256:host".into() }
    }

    #[test]
    fn a_yes_covers_only_the_same_program_key_purpose_and_destination_for_its_duration() {
        let approvals = Approvals::default();
        let now = Instant::now();
        let yes = approval(program("/usr/bin/ssh", 100), "SHA256:k", "ssh-auth");
        approvals.remember(yes.clone(), Duration::from_secs(60), now);
        assert!(approvals.recalls(&yes, now + Duration::from_secs(59)));
        assert!(!approvals.recalls(&approval(program("/usr/bin/ssh", 101), "SHA256:k", "ssh-auth"), now), "another terminal");
        assert!(!approvals.recalls(&approval(program("/usr/bin/git", 100), "SHA256:k", "ssh-auth"), now), "another program");
        assert!(!approvals.recalls(&approval(program("/usr/bin/ssh", 100), "SHA256:other", "ssh-auth"), now), "another key");
        assert!(!approvals.recalls(&approval(program("/usr/bin/ssh", 100), "SHA256:k", "sshsig:git"), now), "another purpose");
        let mut elsewhere = yes.clone();
        elsewhere.destination = "SHA256:other-host".into();
        assert!(!approvals.recalls(&elsewhere, now), "another destination");
        assert_eq!(approvals.list(now).len(), 1);
        assert!(!approvals.recalls(&yes, now + Duration::from_secs(61)), "expired");
        assert!(approvals.list(now + Duration::from_secs(61)).is_empty());
    }

    #[test]
    fn clear_forgets_and_an_unknown_program_is_never_remembered() {
        let approvals = Approvals::default();
        let now = Instant::now();
        let yes = approval(program("/usr/bin/ssh", 100), "SHA256:k", "ssh-auth");
        approvals.remember(yes.clone(), Duration::from_secs(60), now);
        assert_eq!(approvals.clear(), 1);
        assert!(!approvals.recalls(&yes, now));
        let unknown = approval(Program { exe: None, ancestors: Vec::new(), chain: "unknown".into() }, "SHA256:k", "ssh-auth");
        approvals.remember(unknown.clone(), Duration::from_secs(60), now);
        assert!(!approvals.recalls(&unknown, now));
        for i in 0..(MAX_REMEMBERED + 10) {
            approvals.remember(approval(program("/usr/bin/ssh", i as i32), "SHA256:k", "ssh-auth"), Duration::from_secs(60), now);
        }
        assert_eq!(approvals.list(now).len(), MAX_REMEMBERED);
    }
}
