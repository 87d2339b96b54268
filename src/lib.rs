//! keytap: an ssh-agent whose private keys never leave hardware tokens.
// Denied everywhere; only src/fido/ffi.rs (the libfido2 wrapper) allows it, with a reason per block.
#![deny(unsafe_code)]

pub mod agent;
pub mod app;
pub mod remembered;
pub mod attest;
pub mod audit;
pub mod buildkite;
pub mod cert;
pub mod cli;
pub mod client;
pub mod command;
pub mod completions;
pub mod cot;
pub mod daemon;
pub mod doctor;
pub mod fido;
pub mod git_signing;
pub mod log;
pub mod mock;
pub mod host_key;
pub mod paths;
pub mod peer;
pub mod policy;
pub mod prompt;
pub mod purpose;
pub mod setup;
pub mod signature;
pub mod text;
pub mod status;
pub mod token;
pub mod upstream;
