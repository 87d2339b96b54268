//! A software PIV card for tests: piv-authenticator on trussed's virtual platform, plugged into
//! pcscd through vsmartcard's vpcd (which listens on localhost:35963, one port per reader).
//!
//! ```text
//! cargo run --example vcard -- [--readers N] [--state DIR] [--serial N] [--host H] [--port P]
//!                               [--refuse-metadata]
//! ```
//!
//! A thin shim makes the card look enough like a YubiKey for the `yubikey` crate:
//! GET VERSION answers 5.4.3 (3DES default management key, as the card has), GET SERIAL answers
//! a per-reader serial, SELECT accepts the 5-byte PIV AID, and a missing Le means 256.
//!
//! GET METADATA reaches the firmware as it is: piv-authenticator 0.7 answers it without the
//! public key (only `02 02 01 00`, the policies, for a key in 9e; an empty success for every
//! other slot), as a Nitrokey 3 does, so clients must fall back to the slot's certificate.
//! `--refuse-metadata` answers "instruction not supported" (6D00) instead, as a YubiKey before
//! firmware 5.2.3 does.
//! With `--state DIR` the card's storage lives in files there, so a "replugged" card (the process
//! restarted) still holds its keys and PIN.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use piv_authenticator::{Authenticator, Options};
use trussed::backend::BackendId;
use trussed::serde_extensions::{ExtensionDispatch, ExtensionId, ExtensionImpl};
use trussed::virt::{self, StorageConfig, StoreConfig};
use trussed::Platform;
use trussed_auth::AuthExtension;
use trussed_auth_backend::{AuthBackend, AuthContext, FilesystemLayout};
use trussed_chunked::ChunkedExtension;
use trussed_core::api::{reply, request, Reply, Request};
use trussed_core::types::Location;
use trussed_core::Error;
use trussed_hpke::HpkeExtension;
use trussed_staging::{StagingBackend, StagingContext};
use trussed_wrap_key_to_file::WrapKeyToFileExtension;

const PIV_AID_SHORT: [u8; 5] = [0xa0, 0x00, 0x00, 0x03, 0x08];
const PIV_AID_FULL: [u8; 11] = [0xa0, 0x00, 0x00, 0x03, 0x08, 0x00, 0x00, 0x10, 0x00, 0x01, 0x00];
const YK_VERSION: [u8; 3] = [5, 4, 3];
const DEFAULT_SERIAL: u32 = 5_437_251;

// ---- trussed: the backends piv-authenticator needs (auth + staging extensions) ----

#[derive(Default)]
struct Dispatch {
    auth: AuthBackendHolder,
    staging: StagingBackend,
}

struct AuthBackendHolder(AuthBackend);

impl Default for AuthBackendHolder {
    fn default() -> Self {
        AuthBackendHolder(AuthBackend::new(Location::Internal, FilesystemLayout::V0))
    }
}

#[derive(Default)]
struct DispatchContext {
    auth: AuthContext,
    staging: StagingContext,
}

enum Backends {
    Auth,
    Staging,
}

enum Extensions {
    Auth,
    Chunked,
    WrapKeyToFile,
    Hpke,
}

impl From<Extensions> for u8 {
    fn from(id: Extensions) -> u8 {
        match id {
            Extensions::Auth => 0,
            Extensions::Chunked => 1,
            Extensions::WrapKeyToFile => 2,
            Extensions::Hpke => 3,
        }
    }
}

impl TryFrom<u8> for Extensions {
    type Error = Error;
    fn try_from(id: u8) -> Result<Self, Error> {
        Ok(match id {
            0 => Extensions::Auth,
            1 => Extensions::Chunked,
            2 => Extensions::WrapKeyToFile,
            3 => Extensions::Hpke,
            _ => return Err(Error::FunctionNotSupported),
        })
    }
}

impl ExtensionId<AuthExtension> for Dispatch {
    type Id = Extensions;
    const ID: Extensions = Extensions::Auth;
}
impl ExtensionId<ChunkedExtension> for Dispatch {
    type Id = Extensions;
    const ID: Extensions = Extensions::Chunked;
}
impl ExtensionId<WrapKeyToFileExtension> for Dispatch {
    type Id = Extensions;
    const ID: Extensions = Extensions::WrapKeyToFile;
}
impl ExtensionId<HpkeExtension> for Dispatch {
    type Id = Extensions;
    const ID: Extensions = Extensions::Hpke;
}

impl ExtensionDispatch for Dispatch {
    type BackendId = Backends;
    type Context = DispatchContext;
    type ExtensionId = Extensions;

    fn core_request<P: Platform>(
        &mut self,
        backend: &Backends,
        ctx: &mut trussed::types::Context<DispatchContext>,
        request: &Request,
        resources: &mut trussed::service::ServiceResources<P>,
    ) -> Result<Reply, Error> {
        use trussed::backend::Backend;
        match backend {
            Backends::Staging => self.staging.request(&mut ctx.core, &mut ctx.backends.staging, request, resources),
            Backends::Auth => self.auth.0.request(&mut ctx.core, &mut ctx.backends.auth, request, resources),
        }
    }

    fn extension_request<P: Platform>(
        &mut self,
        backend: &Backends,
        extension: &Extensions,
        ctx: &mut trussed::types::Context<DispatchContext>,
        request: &request::SerdeExtension,
        resources: &mut trussed::service::ServiceResources<P>,
    ) -> Result<reply::SerdeExtension, Error> {
        let core = &mut ctx.core;
        match (backend, extension) {
            (Backends::Auth, Extensions::Auth) => ExtensionImpl::<AuthExtension>::extension_request_serialized(
                &mut self.auth.0,
                core,
                &mut ctx.backends.auth,
                request,
                resources,
            ),
            (Backends::Staging, Extensions::Chunked) => ExtensionImpl::<ChunkedExtension>::extension_request_serialized(
                &mut self.staging,
                core,
                &mut ctx.backends.staging,
                request,
                resources,
            ),
            (Backends::Staging, Extensions::WrapKeyToFile) => {
                ExtensionImpl::<WrapKeyToFileExtension>::extension_request_serialized(
                    &mut self.staging,
                    core,
                    &mut ctx.backends.staging,
                    request,
                    resources,
                )
            }
            (Backends::Staging, Extensions::Hpke) => ExtensionImpl::<HpkeExtension>::extension_request_serialized(
                &mut self.staging,
                core,
                &mut ctx.backends.staging,
                request,
                resources,
            ),
            _ => Err(Error::RequestNotAvailable),
        }
    }
}

const BACKENDS: &[BackendId<Backends>] =
    &[BackendId::Custom(Backends::Auth), BackendId::Custom(Backends::Staging), BackendId::Core];

// ---- the card as vpcd sees it: APDU framing plus the YubiKey shim ----

struct Card<T> {
    piv: Authenticator<T>,
    serial: u32,
    /// Answer GET METADATA with 6D00 instead of passing it to the firmware.
    refuse_metadata: bool,
    /// Data of a command chain (CLA bit 0x10) received so far.
    chain: Vec<u8>,
    /// Response bytes not yet fetched with GET RESPONSE.
    pending: Vec<u8>,
}

/// An APDU split into its parts (short or extended length).
struct Apdu<'a> {
    cla: u8,
    ins: u8,
    p1: u8,
    p2: u8,
    data: &'a [u8],
}

fn parse_apdu(msg: &[u8]) -> Option<Apdu<'_>> {
    if msg.len() < 4 {
        return None;
    }
    let (cla, ins, p1, p2) = (msg[0], msg[1], msg[2], msg[3]);
    let body = &msg[4..];
    let data: &[u8] = match body.len() {
        0 | 1 => &[],
        _ if body[0] == 0 && body.len() >= 3 => {
            // Extended length: 00 Lc(2) data [Le(2)], or 00 Le(2) alone.
            let lc = u16::from_be_bytes([body[1], body[2]]) as usize;
            if body.len() == 3 {
                &[]
            } else {
                body.get(3..3 + lc)?
            }
        }
        _ => {
            let lc = body[0] as usize;
            body.get(1..1 + lc)?
        }
    };
    Some(Apdu { cla, ins, p1, p2, data })
}

fn status(data: &mut Vec<u8>, sw: u16) -> Vec<u8> {
    data.extend_from_slice(&sw.to_be_bytes());
    std::mem::take(data)
}

impl<T: piv_authenticator::Client> Card<T> {
    fn respond(&mut self, msg: &[u8]) -> Vec<u8> {
        let Some(apdu) = parse_apdu(msg) else { return status(&mut Vec::new(), 0x6700) };
        if apdu.ins == 0xc0 {
            return self.next_chunk();
        }
        self.pending.clear();
        if apdu.cla & 0x10 != 0 {
            self.chain.extend_from_slice(apdu.data);
            return status(&mut Vec::new(), 0x9000);
        }
        let mut data = std::mem::take(&mut self.chain);
        data.extend_from_slice(apdu.data);
        match apdu.ins {
            // Shim: GET VERSION answers a YubiKey 5 firmware with a 3DES default management key.
            0xfd => return status(&mut YK_VERSION.to_vec(), 0x9000),
            // Shim: a serial per reader, so two cards are two YubiKeys.
            0xf8 => return status(&mut self.serial.to_be_bytes().to_vec(), 0x9000),
            // Optional: no metadata at all, as on a YubiKey before 5.2.3.
            0xf7 if self.refuse_metadata => return status(&mut Vec::new(), 0x6d00),
            0xa4 if data == PIV_AID_SHORT => data = PIV_AID_FULL.to_vec(),
            _ => {}
        }
        // Re-encode as one command that always carries Le (missing Le = 256, or more).
        let mut command = vec![apdu.cla & !0x10, apdu.ins, apdu.p1, apdu.p2];
        if data.is_empty() {
            command.push(0);
        } else if data.len() <= 255 {
            command.push(data.len() as u8);
            command.extend_from_slice(&data);
            command.push(0);
        } else {
            command.push(0);
            command.extend_from_slice(&(data.len() as u16).to_be_bytes());
            command.extend_from_slice(&data);
            command.extend_from_slice(&[0, 0]);
        }
        let view = match iso7816::command::CommandView::try_from(command.as_slice()) {
            Ok(v) => v,
            Err(_) => return status(&mut Vec::new(), 0x6700),
        };
        let mut reply = heapless::Vec::<u8, 8192>::new();
        match self.piv.respond(view, reply.as_mut_view()) {
            Ok(()) => {
                self.pending = reply.to_vec();
                self.next_chunk()
            }
            Err(sw) => status(&mut Vec::new(), u16::from(sw)),
        }
    }

    /// At most 256 bytes per response; 61xx says more is waiting for GET RESPONSE.
    fn next_chunk(&mut self) -> Vec<u8> {
        let n = self.pending.len().min(256);
        let mut chunk: Vec<u8> = self.pending.drain(..n).collect();
        let left = self.pending.len();
        if left == 0 {
            status(&mut chunk, 0x9000)
        } else {
            status(&mut chunk, 0x6100 | left.min(255) as u16)
        }
    }
}

impl<T: piv_authenticator::Client> vpicc::VSmartCard for Card<T> {
    fn power_off(&mut self) {
        self.chain.clear();
        self.pending.clear();
        self.piv.deselect();
    }

    fn reset(&mut self) {
        self.power_off();
    }

    fn execute(&mut self, msg: &[u8]) -> Vec<u8> {
        let answer = self.respond(msg);
        // VCARD_TRACE=1 prints every command and answer (debugging a client against the card).
        if std::env::var_os("VCARD_TRACE").is_some() {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            eprintln!("vcard {}: > {}\nvcard {}: < {}", self.serial, hex(msg), self.serial, hex(&answer));
        }
        answer
    }
}

// ---- main ----

struct Args {
    readers: u16,
    state: Option<PathBuf>,
    serial: u32,
    host: String,
    port: u16,
    refuse_metadata: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { readers: 1, state: None, serial: DEFAULT_SERIAL, host: "127.0.0.1".into(), port: 35963, refuse_metadata: false };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--readers" => args.readers = value()?.parse().map_err(|e| format!("--readers: {e}"))?,
            "--state" => args.state = Some(PathBuf::from(value()?)),
            "--serial" => args.serial = value()?.parse().map_err(|e| format!("--serial: {e}"))?,
            "--host" => args.host = value()?,
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--refuse-metadata" => args.refuse_metadata = true,
            "-h" | "--help" => {
                println!("usage: vcard [--readers N] [--state DIR] [--serial N] [--host H] [--port P] [--refuse-metadata]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.readers == 0 {
        return Err("--readers must be at least 1".into());
    }
    Ok(args)
}

fn store_config(state: Option<&PathBuf>, reader: u16) -> StoreConfig<'static> {
    match state {
        None => StoreConfig::ram(),
        Some(dir) => {
            let dir = dir.join(format!("reader{reader}"));
            std::fs::create_dir_all(&dir).expect("creating the card state directory");
            StoreConfig {
                internal: StorageConfig::filesystem(dir.join("internal.bin")),
                external: StorageConfig::filesystem(dir.join("external.bin")),
                volatile: StorageConfig::ram(),
            }
        }
    }
}

/// Run one card on one vpcd reader until vpcd goes away.
fn run_reader(args: &Args, reader: u16) -> Result<(), String> {
    let addr = format!("{}:{}", args.host, args.port + reader);
    let serial = args.serial + u32::from(reader);
    let connection = {
        let mut tries = 0;
        loop {
            match vpicc::connect_socket(addr.as_str()) {
                Ok(c) => break c,
                Err(e) if tries < 50 => {
                    tries += 1;
                    if tries == 1 {
                        eprintln!("vcard: waiting for vpcd at {addr}: {e}");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(format!("cannot reach vpcd at {addr}: {e}; is pcscd running with vsmartcard-vpcd? (scripts/pcsc-up.sh)")),
            }
        }
    };
    println!("vcard: reader {reader} ({addr}) serial {serial}");
    let state = args.state.clone();
    virt::with_platform(store_config(state.as_ref(), reader), |platform| {
        platform.run_client_with_backends("piv", Dispatch::default(), BACKENDS, |client| {
            let mut card = Card {
                piv: Authenticator::new(client, Options::default()),
                serial,
                refuse_metadata: args.refuse_metadata,
                chain: Vec::new(),
                pending: Vec::new(),
            };
            connection.run(&mut card).map_err(|e| format!("reader {reader}: vpcd connection ended: {e}"))
        })
    })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vcard: {e}");
            std::process::exit(2);
        }
    };
    let args = std::sync::Arc::new(args);
    let threads: Vec<_> = (0..args.readers)
        .map(|reader| {
            let args = args.clone();
            std::thread::spawn(move || run_reader(&args, reader))
        })
        .collect();
    let mut failed = false;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("vcard: {e}");
                failed = true;
            }
            Err(_) => failed = true,
        }
    }
    std::process::exit(if failed { 1 } else { 0 });
}
