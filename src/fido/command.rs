//! `keytap setup --fido` (enrol an sk key), `keytap fido load` (resident keys), and the agent's
//! FIDO devices.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ssh_key::public::KeyData;

use super::device::FidoToken;
use super::ffi::{self, FidoError};
use super::store::{self, SkStore};
use super::{SkKey, FLAG_RESIDENT, FLAG_USER_PRESENCE, FLAG_USER_VERIFICATION};
use crate::command::AppError;
use crate::cli::{AgentArgs, FidoCommand, FidoLoadArgs, SetupArgs};
use crate::prompt::{read_pin_file, PinRequest, Prompter, SystemPrompter};
use crate::token::owner::{OwnerOptions, TokenHandle};
use crate::token::{KeyAlgorithm, Pin, TokenError, TokenKind};

fn msg(m: impl Into<String>) -> AppError {
    AppError::Message(m.into())
}

/// The agent's FIDO side: the loaded-keys store and one owner thread per device. `None` store:
/// FIDO is off (`--no-fido`, or `--token mock` without `--fido-device`).
pub fn agent_devices(args: &AgentArgs, options: OwnerOptions) -> Result<(Option<SkStore>, Vec<TokenHandle>), AppError> {
    let f = &args.fido;
    if f.no_fido || (f.devices.is_empty() && args.token.kind() == TokenKind::Mock) {
        return Ok((None, Vec::new()));
    }
    let devices = if f.devices.is_empty() { ffi::manifest() } else { f.devices.clone() };
    let path = f.fido_keys.clone().unwrap_or_else(store::default_path);
    let store = SkStore::open(&path).map_err(msg)?;
    let prompter: Arc<dyn Prompter> = Arc::new(SystemPrompter::for_fido(f.fido_pin_file.clone(), args.pinentry.clone(), args.askpass.clone()));
    let touch_timeout = f.touch_timeout.filter(|t| *t > 0.0).map(Duration::from_secs_f64);
    tracing::info!(devices = ?devices, keys = store.keys().len(), state = %path.display(), "FIDO security keys");
    let handles = devices
        .iter()
        .map(|d| TokenHandle::spawn(format!("fido:{d}"), Box::new(FidoToken::new(d, touch_timeout)), prompter.clone(), options.clone()))
        .collect();
    Ok((Some(store), handles))
}

/// Without `--fido-device`, security keys plugged in after the start are picked up: libfido2's
/// device list is read every two seconds and each new device gets its owner thread.
pub fn spawn_watcher<F>(args: &AgentArgs, options: OwnerOptions, known: Vec<String>, on_new: F)
where
    F: Fn(TokenHandle) + Send + 'static,
{
    let f = &args.fido;
    if f.no_fido || !f.devices.is_empty() || args.token.kind() == TokenKind::Mock {
        return;
    }
    let prompter: Arc<dyn Prompter> = Arc::new(SystemPrompter::for_fido(f.fido_pin_file.clone(), args.pinentry.clone(), args.askpass.clone()));
    let touch_timeout = f.touch_timeout.filter(|t| *t > 0.0).map(Duration::from_secs_f64);
    let spawned = std::thread::Builder::new().name("fido-watcher".into()).spawn(move || {
        let mut known: std::collections::HashSet<String> = known.into_iter().collect();
        loop {
            std::thread::sleep(Duration::from_secs(2));
            for path in ffi::manifest() {
                if known.insert(path.clone()) {
                    tracing::info!(device = %path, "FIDO security key plugged in");
                    on_new(TokenHandle::spawn(format!("fido:{path}"), Box::new(FidoToken::new(&path, touch_timeout)), prompter.clone(), options.clone()));
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("cannot watch for FIDO security keys: {e}");
    }
}

/// The device to use: the one named, or the only one plugged in.
fn pick_device(named: Option<&str>) -> Result<String, AppError> {
    if let Some(d) = named {
        return Ok(d.to_string());
    }
    let mut found = ffi::manifest();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(msg("no FIDO security key found; plug one in (or name it with --device)")),
        _ => Err(msg(format!("several FIDO security keys are plugged in ({}); pick one with --device", found.join(", ")))),
    }
}

fn open(path: &str) -> Result<FidoToken, AppError> {
    let mut token = FidoToken::new(path, None);
    token.open_device()?;
    Ok(token)
}

/// Ask for the FIDO PIN (file or pinentry), refusing at the retry floor.
fn ask_pin(token: &mut FidoToken, pin_file: Option<&Path>, pinentry: Option<&str>, reason: &str) -> Result<Pin, AppError> {
    let retries = token.open_device()?.pin_retries().map_err(|e| token.map_error(e))?;
    if retries <= 1 {
        return Err(TokenError::FidoPinLastRetry.into());
    }
    let prompter = SystemPrompter::for_fido(pin_file.map(Path::to_path_buf), pinentry.map(str::to_string), None);
    // No requester terminal: the prompter uses this command's own.
    let request = PinRequest { serial: 0, retries, reason: reason.to_string(), error: None, terminal: None };
    prompter
        .pin(&request)
        .map_err(|e| TokenError::PinUnavailable(e.to_string()))?
        .ok_or_else(|| TokenError::PinUnavailable("PIN entry was cancelled".into()).into())
}

/// The public key libfido2 returns for a credential, as an sk key blob.
fn sk_public(cose_alg: i32, raw: &[u8], application: &str) -> Result<KeyData, AppError> {
    match cose_alg {
        ffi::COSE_ES256 if raw.len() == 64 => {
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(raw);
            let point = p256::EncodedPoint::from_bytes(&sec1).map_err(|e| msg(format!("device returned a bad P-256 key: {e}")))?;
            Ok(KeyData::SkEcdsaSha2NistP256(ssh_key::public::SkEcdsaSha2NistP256::new(point, application)))
        }
        ffi::COSE_EDDSA if raw.len() == 32 => {
            let pk: [u8; 32] = raw.try_into().expect("length checked");
            Ok(KeyData::SkEd25519(ssh_key::public::SkEd25519::new(ssh_key::public::Ed25519PublicKey(pk), application)))
        }
        other => Err(msg(format!("device returned a key of COSE algorithm {other} ({} bytes); keytap uses ES256 and EdDSA", raw.len()))),
    }
}

fn write_key_files(path: &Path, key: &SkKey) -> Result<(), AppError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = key.to_private_file().map_err(msg)?;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)
        .map_err(|e| msg(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())?;
    let pub_path = PathBuf::from(format!("{}.pub", path.display()));
    std::fs::write(&pub_path, format!("{}\n", key.public_line())).map_err(|e| msg(format!("cannot write {}: {e}", pub_path.display())))?;
    Ok(())
}

fn default_comment() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "host".into());
    format!("{user}@{host}")
}

/// `keytap setup --fido`: set the FIDO PIN and/or enrol a new sk key, as `ssh-keygen -t *-sk`.
pub fn setup(args: &SetupArgs) -> Result<(), AppError> {
    let f = &args.fido;
    let path = pick_device(f.device.as_deref())?;
    let mut token = open(&path)?;
    if let Some(new_file) = &args.new_pin_file {
        let new = read_pin_file(new_file).map_err(|e| msg(e.to_string()))?;
        if new.chars().count() < 4 {
            return Err(msg("a FIDO PIN has at least 4 characters; choose another"));
        }
        let has_pin = token.open_device()?.caps().has_pin;
        let old = if has_pin { Some(ask_pin(&mut token, args.pin_file.as_deref(), args.pinentry.as_deref(), "change the FIDO PIN")?) } else { None };
        let result = token.open_device()?.set_pin(&new, old.as_ref().map(|p| p.as_str()));
        result.map_err(|e| token.map_error(e))?;
        println!("{} the FIDO PIN of {path}", if has_pin { "Changed" } else { "Set" });
    }
    if args.no_key {
        return Ok(());
    }
    let out = f.out.clone().ok_or_else(|| msg("--out PATH is required with --fido: the key file is written there (and PATH.pub)"))?;
    if !f.application.starts_with("ssh:") {
        return Err(msg(format!("--application {:?} must start with \"ssh:\" (as ssh-keygen requires)", f.application)));
    }
    if f.user.as_ref().is_some_and(|u| u.len() > 31) {
        return Err(msg("--user is at most 31 characters"));
    }
    let cose_alg = match args.alg {
        KeyAlgorithm::P256 => ffi::COSE_ES256,
        KeyAlgorithm::Ed25519 => ffi::COSE_EDDSA,
        other => return Err(msg(format!("--alg {other} is not a FIDO algorithm; use p256 or ed25519"))),
    };
    let caps = token.open_device()?.caps();
    let mut flags = 0u8;
    if !f.no_touch_required {
        flags |= FLAG_USER_PRESENCE;
    }
    if f.verify_required {
        flags |= FLAG_USER_VERIFICATION;
    }
    if f.resident {
        flags |= FLAG_RESIDENT;
    }
    // As sk-usbhid: credProtect UV_REQUIRED for verify-required, UV_OPTIONAL_WITH_ID for a
    // resident key (so it is not listed without the PIN).
    let cred_protect = if f.verify_required {
        Some(ffi::CRED_PROT_UV_REQUIRED)
    } else if f.resident {
        Some(ffi::CRED_PROT_UV_OPTIONAL_WITH_ID)
    } else {
        None
    };
    if cred_protect.is_some() && !caps.supports_cred_prot {
        return Err(msg("this security key does not support credProtect, which --verify-required and --resident need"));
    }
    let mut user_id = vec![0u8; 32];
    if let Some(user) = &f.user {
        user_id[..user.len()].copy_from_slice(user.as_bytes());
    }
    let mut challenge = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut challenge);
    let request = ffi::MakeCredential {
        cose_alg,
        rp_id: f.application.clone(),
        client_data_hash: challenge,
        user_id,
        user_name: f.user.clone().unwrap_or_else(|| "openssh".into()),
        resident: f.resident,
        cred_protect,
    };
    let mut pin = if (f.resident || f.verify_required) && caps.has_pin {
        Some(ask_pin(&mut token, args.pin_file.as_deref(), args.pinentry.as_deref(), "create a FIDO key")?)
    } else {
        None
    };
    eprintln!("Touch your security key ({path}) to create the key.");
    let credential = loop {
        let result = token.open_device()?.make_credential(&request, pin.as_ref().map(|p| p.as_str()));
        match result {
            Ok(c) => break c,
            Err(FidoError::PIN_REQUIRED) if pin.is_none() => {
                pin = Some(ask_pin(&mut token, args.pin_file.as_deref(), args.pinentry.as_deref(), "create a FIDO key")?);
            }
            Err(FidoError::UNSUPPORTED_ALGORITHM) => return Err(msg(format!("this security key cannot make {} keys; try --alg p256", args.alg))),
            Err(e) => return Err(token.map_error(e).into()),
        }
    };
    let public_key = sk_public(cose_alg, &credential.public_key, &f.application)?;
    let key = SkKey { public_key, flags, key_handle: credential.id, comment: default_comment(), device: None };
    write_key_files(&out, &key)?;
    println!("{}", key.public_line());
    eprintln!("Wrote {} and {}.pub ({}; flags 0x{:02x}). Load it with `ssh-add {}`.", out.display(), out.display(), key.fingerprint(), flags, out.display());
    Ok(())
}

pub fn run(cmd: FidoCommand) -> Result<(), AppError> {
    match cmd {
        FidoCommand::Load(args) => load(&args),
    }
}

/// `keytap fido load`: the resident `ssh:*` keys into the running agent (and files).
fn load(args: &FidoLoadArgs) -> Result<(), AppError> {
    let path = pick_device(args.device.as_deref())?;
    let mut token = open(&path)?;
    let caps = token.open_device()?.caps();
    if !caps.supports_credman {
        return Err(msg("this security key has no credential management, so its resident keys cannot be listed"));
    }
    let pin = ask_pin(&mut token, args.pin_file.as_deref(), args.pinentry.as_deref(), "read the resident keys")?;
    let result = token.open_device()?.resident_credentials("ssh:", &pin);
    let creds = result.map_err(|e| token.map_error(e))?;
    let mut keys = Vec::new();
    for cred in creds {
        let public_key = match sk_public(cred.cose_alg, &cred.public_key, &cred.rp_id) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("skipping a credential of {}: {e}", cred.rp_id);
                continue;
            }
        };
        // As sk-usbhid: touch and resident; verification too when the credential demands it
        // and the device cannot verify by itself.
        let mut flags = FLAG_USER_PRESENCE | FLAG_RESIDENT;
        if cred.cred_protect == ffi::CRED_PROT_UV_REQUIRED && !caps.has_uv {
            flags |= FLAG_USER_VERIFICATION;
        }
        let user = String::from_utf8_lossy(&cred.user_id).trim_end_matches('\0').to_string();
        keys.push((SkKey { public_key, flags, key_handle: cred.id, comment: cred.rp_id.clone(), device: Some(path.clone()) }, user));
    }
    if keys.is_empty() {
        return Err(msg(format!("no resident ssh: keys on {path}; create one with `keytap setup --fido --resident`")));
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
        for (key, user) in &keys {
            let mut name = String::from(if key.is_ecdsa() { "id_ecdsa_sk_rk" } else { "id_ed25519_sk_rk" });
            let app = key.application().trim_start_matches("ssh:");
            if !app.is_empty() {
                name.push('_');
                name.push_str(&app.replace('/', "_"));
            }
            if !user.is_empty() && user != "openssh" {
                name.push('_');
                name.push_str(&user.replace('/', "_"));
            }
            let file = dir.join(name);
            write_key_files(&file, key)?;
            println!("Wrote {}", file.display());
        }
    }
    let mut client = match crate::client::AgentClient::from_env() {
        Some(c) => c?,
        None if args.out.is_some() => return Ok(()),
        None => return Err(msg("SSH_AUTH_SOCK is not set: start the agent (`keytap agent`), or pass --out DIR to only write the key files")),
    };
    for (key, _) in &keys {
        let keypair = match &key.public_key {
            KeyData::SkEcdsaSha2NistP256(p) => ssh_key::private::KeypairData::SkEcdsaSha2NistP256(
                ssh_key::private::SkEcdsaSha2NistP256::new(p.clone(), key.flags, key.key_handle.clone()).map_err(|e| msg(e.to_string()))?,
            ),
            KeyData::SkEd25519(p) => ssh_key::private::KeypairData::SkEd25519(
                ssh_key::private::SkEd25519::new(p.clone(), key.flags, key.key_handle.clone()).map_err(|e| msg(e.to_string()))?,
            ),
            _ => continue,
        };
        let request = ssh_agent_lib::proto::Request::AddIdentity(ssh_agent_lib::proto::AddIdentity {
            credential: ssh_agent_lib::proto::PrivateCredential::Key { privkey: keypair, comment: key.comment.clone() },
        });
        match client.request(&request)? {
            ssh_agent_lib::proto::Response::Success => println!("Loaded {} {}", key.fingerprint(), key.comment),
            _ => return Err(crate::client::ClientError::Refused.into()),
        }
    }
    Ok(())
}
