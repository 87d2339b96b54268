//! A small blocking agent client: what keytap's own commands use to reach a running agent.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh_agent_lib::proto::{Extension, PublicCredential, Request, Response, SignRequest};
use ssh_encoding::{Decode, Encode};
use ssh_key::public::KeyData;
use ssh_key::Signature;

use crate::agent::{StatusReport, EXT_STATUS};
use crate::agent::frame::MAX_FRAME;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the agent at {0}: {1}; start it with `keytap agent` or check SSH_AUTH_SOCK")]
    Connect(PathBuf, std::io::Error),
    #[error("agent connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the agent refused the request (see its log: `keytap log` or the agent's stderr)")]
    Refused,
    #[error("unexpected answer from the agent: {0}")]
    Protocol(String),
}

pub struct AgentClient {
    stream: UnixStream,
}

impl AgentClient {
    pub fn connect(path: &Path) -> Result<AgentClient, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| ClientError::Connect(path.to_path_buf(), e))?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(AgentClient { stream })
    }

    /// Connect to `$SSH_AUTH_SOCK`.
    pub fn from_env() -> Option<Result<AgentClient, ClientError>> {
        let path = std::env::var_os("SSH_AUTH_SOCK").filter(|p| !p.is_empty())?;
        Some(AgentClient::connect(Path::new(&path)))
    }

    pub fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.send(request)?;
        self.receive()
    }

    /// Send one request (length and body in one write); `receive` reads its answer.
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut frame = vec![0u8; 4];
        request.encode(&mut frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&frame)?;
        Ok(())
    }

    /// The answer to the request sent last.
    pub fn receive(&mut self) -> Result<Response, ClientError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(ClientError::Protocol(format!("answer of {len} bytes")));
        }
        let mut answer = vec![0u8; len];
        self.stream.read_exact(&mut answer)?;
        Response::decode(&mut &answer[..]).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub fn identities(&mut self) -> Result<Vec<(PublicCredential, String)>, ClientError> {
        match self.request(&Request::RequestIdentities)? {
            Response::IdentitiesAnswer(ids) => Ok(ids.into_iter().map(|i| (i.credential, i.comment)).collect()),
            Response::Failure => Err(ClientError::Refused),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    pub fn sign(&mut self, key: &KeyData, data: &[u8], flags: u32) -> Result<Signature, ClientError> {
        self.send_sign(key, data, flags)?;
        self.receive_signature()
    }

    /// Send a sign request without waiting, so the caller can work while the token signs.
    pub fn send_sign(&mut self, key: &KeyData, data: &[u8], flags: u32) -> Result<(), ClientError> {
        self.send(&Request::SignRequest(SignRequest { credential: PublicCredential::Key(key.clone()), data: data.to_vec(), flags }))
    }

    /// The signature answering the sign request sent last.
    pub fn receive_signature(&mut self) -> Result<Signature, ClientError> {
        match self.receive()? {
            Response::SignResponse(sig) => Ok(sig),
            Response::Failure => Err(ClientError::Refused),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Send an extension request and return the answer's details (after the name).
    pub fn extension(&mut self, name: &str, details: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        match self.request(&Request::Extension(Extension { name: name.into(), details: details.into() }))? {
            Response::ExtensionResponse(ext) => Ok(ext.details.into_bytes()),
            Response::Success => Ok(Vec::new()),
            Response::Failure | Response::ExtensionFailure => Err(ClientError::Refused),
            other => Err(ClientError::Protocol(format!("{other:?}"))),
        }
    }

    /// Ask a keytap agent for its status; `Refused` means the agent is not keytap.
    pub fn status(&mut self) -> Result<StatusReport, ClientError> {
        let details = self.extension(EXT_STATUS, Vec::new())?;
        let json = Vec::<u8>::decode(&mut &details[..]).map_err(|e| ClientError::Protocol(e.to_string()))?;
        serde_json::from_slice(&json).map_err(|e| ClientError::Protocol(e.to_string()))
    }
}

/// The running keytap agent behind `$SSH_AUTH_SOCK`, if that is one.
pub fn keytap_agent() -> Option<(AgentClient, StatusReport)> {
    let mut client = AgentClient::from_env()?.ok()?;
    let status = client.status().ok()?;
    Some((client, status))
}
