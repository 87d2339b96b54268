//! keytap: an ssh-agent whose private keys never leave hardware tokens.
// Denied everywhere; only src/fido/ffi.rs (the libfido2 wrapper) allows it, with a reason per block.
#![deny(unsafe_code)]

pub mod agent;
pub mod app;
pub mod attest;
pub mod audit;
pub mod cert;
pub mod cli;
pub mod client;
pub mod cot;
pub mod fido;
pub mod git_signing;
pub mod paths;
pub mod peer;
pub mod policy;
pub mod prompt;
pub mod purpose;
pub mod signature;
pub mod token;
