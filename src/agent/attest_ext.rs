//! `keytap-attest@keytap.dev`: hand out a slot's PIV attestation (INS 0xF9 certificate and
//! the f9 certificate). Both are public; the challenge signature that makes a proof goes
//! through an ordinary SIGN_REQUEST, so the agent's usual checks and logging apply to it.
//!
//! Request details: `string slot` ("9a") `uint32 serial` (0: the first token with that slot).
//! Response details: `string attestation-certificate-DER` `string f9-certificate-DER`.

use ssh_agent_lib::proto::{Extension, Response};
use ssh_encoding::{Decode, Encode};

use super::{encode, failure, Agent, Connection};
use crate::token::Slot;

pub const EXT_ATTEST: &str = "keytap-attest@keytap.dev";

impl Agent {
    pub(super) async fn attest_extension(&self, conn: &Connection, ext: &Extension) -> Vec<u8> {
        match self.attest(ext.details.as_ref()).await {
            Ok((slot, serial, attestation)) => {
                tracing::info!(peer = %conn.peer, %slot, serial, "attestation handed out");
                let mut details = Vec::new();
                attestation.slot_certificate_der.encode(&mut details).expect("encoding to a vec");
                attestation.intermediate_der.encode(&mut details).expect("encoding to a vec");
                encode(Response::ExtensionResponse(Extension { name: EXT_ATTEST.into(), details: details.into() }))
            }
            Err(reason) => {
                tracing::warn!(peer = %conn.peer, "attestation refused: {reason}");
                failure()
            }
        }
    }

    async fn attest(&self, mut details: &[u8]) -> Result<(Slot, u32, crate::token::Attestation), String> {
        if self.lock.is_locked() {
            return Err("the agent is locked (unlock with `ssh-add -X`)".into());
        }
        let slot_text = String::decode(&mut details).map_err(|e| format!("malformed request: {e}"))?;
        let serial = u32::decode(&mut details).map_err(|e| format!("malformed request: {e}"))?;
        if !details.is_empty() {
            return Err("malformed request: trailing bytes".into());
        }
        let slot: Slot = slot_text.parse()?;
        let token = self
            .tokens()
            .into_iter()
            .find(|t| t.keys().iter().any(|k| k.slot == slot && (serial == 0 || k.serial == serial)))
            .ok_or_else(|| format!("no token with a key in slot {slot}{}", if serial == 0 { String::new() } else { format!(" and serial {serial}") }))?;
        let serial = token.key_in_slot(slot).map(|k| k.serial).unwrap_or(serial);
        let attestation = token.run(move |owner| owner.token.attest(slot)).await.and_then(|r| r).map_err(|e| e.to_string())?;
        Ok((slot, serial, attestation))
    }
}
