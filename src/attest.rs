//! PIV attestation: proofs that a key was generated on a token, and their verification.

pub mod mock;
