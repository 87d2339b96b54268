//! A mock attestation CA (root + f9 key) for the mock token.
// PLACEHOLDER: filled in by the attestation work (issue 7).

use serde::{Deserialize, Serialize};

use crate::token::{Attestation, PinPolicy, Slot, TouchPolicy};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MockAttestationCa {}

impl MockAttestationCa {
    pub fn generate(_serial: u32, _firmware: (u8, u8, u8)) -> Result<Self, String> {
        Ok(MockAttestationCa {})
    }

    pub fn root_pem(&self) -> String {
        String::new()
    }

    pub fn attest(
        &self,
        _slot: Slot,
        _spki_der: &[u8],
        _serial: u32,
        _firmware: (u8, u8, u8),
        _pin: PinPolicy,
        _touch: TouchPolicy,
    ) -> Result<Attestation, String> {
        Err("mock attestation is not implemented yet".into())
    }
}
