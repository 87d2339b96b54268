//! One FIDO device as a [`Token`]: opened once and held open (one CTAP exchange per signature),
//! dropped on any transport error and reopened on the next request.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::ffi::{self, FidoError};
use crate::token::{
    Attestation, GenerateRequest, KeyInfo, Pin, SignScheme, SkAssertion, SkSignRequest, Slot, Token, TokenError, TokenInfo,
    TokenResult,
};

pub struct FidoToken {
    path: String,
    device: Option<ffi::Device>,
    /// Give up waiting for a touch after this long (cancelling on the device).
    touch_timeout: Option<Duration>,
    /// What the last assertion failed with.
    last_error: Option<FidoError>,
}

impl FidoToken {
    pub fn new(path: &str, touch_timeout: Option<Duration>) -> FidoToken {
        FidoToken { path: path.to_string(), device: None, touch_timeout, last_error: None }
    }

    fn device(&mut self) -> TokenResult<&mut ffi::Device> {
        if self.device.is_none() {
            // A device busy with another program's transaction answers CHANNEL_BUSY to a new
            // opener: try again briefly, as hosts do.
            let mut tries = 0;
            let device = loop {
                match ffi::Device::open(&self.path) {
                    Ok(d) => break d,
                    Err(e) if tries < 3 && e.is_transport() => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(100 * tries));
                    }
                    Err(e) => return Err(TokenError::NotPresent(format!("security key {}: {e}; plug it in (or check --fido-device) and retry", self.path))),
                }
            };
            tracing::debug!(device = %self.path, caps = ?device.caps(), "opened FIDO device");
            self.device = Some(device);
        }
        Ok(self.device.as_mut().expect("just opened"))
    }

    /// Map a libfido2 error; a lost device is dropped so the next request reopens it.
    fn error(&mut self, e: FidoError) -> TokenError {
        if e.is_transport() {
            self.device = None;
            return TokenError::NotPresent(format!("security key {} stopped answering ({e})", self.path));
        }
        match e {
            FidoError::USER_ACTION_TIMEOUT => TokenError::TouchTimeout,
            FidoError::OPERATION_DENIED => TokenError::TouchDenied,
            FidoError::KEEPALIVE_CANCEL => TokenError::Cancelled,
            FidoError::NO_CREDENTIALS => TokenError::NoCredential,
            FidoError::PIN_AUTH_BLOCKED => TokenError::FidoPinAuthBlocked,
            FidoError::PIN_BLOCKED => TokenError::PinBlocked,
            FidoError::PIN_REQUIRED | FidoError::PIN_NOT_SET => {
                let retries = self.device.as_mut().and_then(|d| d.pin_retries().ok()).unwrap_or(0);
                if e == FidoError::PIN_NOT_SET {
                    TokenError::PinUnavailable("the security key has no PIN yet; set one (`keytap setup --fido --new-pin-file FILE --no-key`)".into())
                } else {
                    TokenError::PinRequired { retries }
                }
            }
            FidoError::PIN_INVALID => {
                let retries = self.device.as_mut().and_then(|d| d.pin_retries().ok()).unwrap_or(0);
                TokenError::WrongPin { retries }
            }
            other => TokenError::Other(format!("security key {}: {other}", self.path)),
        }
    }

    /// Raw access for enrolment and resident-key commands.
    pub fn open_device(&mut self) -> TokenResult<&mut ffi::Device> {
        self.device()
    }

    pub fn map_error(&mut self, e: FidoError) -> TokenError {
        self.error(e)
    }
}

impl Token for FidoToken {
    fn info(&mut self) -> TokenResult<TokenInfo> {
        let path = self.path.clone();
        self.device()?;
        Ok(TokenInfo { serial: 0, model: format!("FIDO2 security key {path}"), firmware: (0, 0, 0) })
    }

    /// sk keys are not listed by the device: the agent keeps the loaded ones (see `store`).
    fn keys(&mut self) -> TokenResult<Vec<KeyInfo>> {
        Ok(Vec::new())
    }

    fn pin_retries(&mut self) -> TokenResult<u8> {
        let result = self.device()?.pin_retries();
        result.map_err(|e| self.error(e))
    }

    fn verify_pin(&mut self, _pin: &Pin) -> TokenResult<()> {
        Err(TokenError::Unsupported("a FIDO key checks its PIN with each request".into()))
    }

    fn sign(&mut self, _slot: Slot, _scheme: SignScheme, _message: &[u8]) -> TokenResult<Vec<u8>> {
        Err(TokenError::Unsupported("a FIDO key signs only for its sk credentials".into()))
    }

    fn attest(&mut self, _slot: Slot) -> TokenResult<Attestation> {
        Err(TokenError::NotAttestable("FIDO credentials have no PIV attestation".into()))
    }

    fn generate(&mut self, _request: GenerateRequest, _force: bool) -> TokenResult<KeyInfo> {
        Err(TokenError::Unsupported("FIDO keys are created with `keytap setup --fido`".into()))
    }

    fn release(&mut self) {
        self.device = None;
    }

    fn sk_has_uv(&mut self) -> TokenResult<bool> {
        Ok(self.device()?.caps().has_uv)
    }

    fn sk_sign(&mut self, request: &SkSignRequest, pin: Option<&Pin>) -> TokenResult<SkAssertion> {
        let was_open = self.device.is_some();
        match self.sk_sign_once(request, pin) {
            // The device held open went away since the last request (re-plugged) and the
            // request was never delivered: once more on a fresh open.
            Err(TokenError::NotPresent(_)) if was_open && self.last_error == Some(FidoError::TX) => self.sk_sign_once(request, pin),
            other => other,
        }
    }
}

impl FidoToken {
    fn sk_sign_once(&mut self, request: &SkSignRequest, pin: Option<&Pin>) -> TokenResult<SkAssertion> {
        self.last_error = None;
        let touch_timeout = self.touch_timeout;
        let path = self.path.clone();
        let device = self.device()?;
        // uv only when the key needs it, no PIN is given and the device verifies by itself
        // (sk-usbhid); otherwise the PIN (pinUvAuthParam) stands for verification.
        let uv = request.uv_required && pin.is_none() && device.caps().has_uv;
        let control = device.control();
        *control.deadline.lock().expect("deadline lock") = touch_timeout.filter(|_| request.up).map(|t| Instant::now() + t);
        *control.cancel.lock().expect("cancel lock") = request.cancel.clone();
        control.timed_out.store(false, Ordering::SeqCst);
        // hidraw devices: libfido2's own request timeout stands in for the transport deadline.
        let host_timeout = (!path.starts_with("unix:")).then_some(touch_timeout.filter(|_| request.up)).flatten();
        if let Some(t) = host_timeout {
            let _ = device.set_timeout(t.as_millis().min(i32::MAX as u128) as i32);
        }
        let started = Instant::now();
        let result = device.get_assertion(
            &ffi::GetAssertion {
                rp_id: request.rp_id.clone(),
                client_data_hash: super::client_data_hash(&request.data),
                key_handle: request.key_handle.clone(),
                up: request.up,
                uv,
            },
            pin.map(|p| p.as_str()),
        );
        *control.deadline.lock().expect("deadline lock") = None;
        *control.cancel.lock().expect("cancel lock") = None;
        if host_timeout.is_some() {
            let _ = device.set_timeout(-1);
        }
        match result {
            Ok(a) => Ok(SkAssertion { flags: a.flags, counter: a.counter, signature: a.signature, device: path }),
            Err(FidoError::KEEPALIVE_CANCEL) if control.timed_out.load(Ordering::SeqCst) => Err(TokenError::TouchTimeout),
            Err(FidoError::RX) if host_timeout.is_some_and(|t| started.elapsed() >= t) => {
                // The key still waits for a touch: stop it, and start afresh next time.
                let _ = device.cancel();
                self.device = None;
                Err(TokenError::TouchTimeout)
            }
            Err(e) => {
                self.last_error = Some(e);
                Err(self.error(e))
            }
        }
    }
}
