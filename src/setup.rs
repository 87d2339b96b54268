//! `keytap setup`: create a key on a token (generated on the device), change its PIN or PUK,
//! protect its management key; through the running agent when SSH_AUTH_SOCK is keytap's (it
//! owns the tokens then, see `agent::setup_ext`), else on the token directly.

use std::path::Path;
use std::sync::Arc;

use crate::cli::SetupArgs;
use crate::command::{open_tokens, AppError};
use crate::prompt::{Prompter, SystemPrompter};

fn report_protected(changed: bool) {
    if changed {
        println!("The default management key was replaced by a random one stored on the token behind the PIN.");
    } else {
        println!("The management key is not the factory default; left as it is.");
    }
}

/// `keytap setup`: generate a key on the token, write its certificate, print the key.
pub fn run(args: SetupArgs) -> Result<(), AppError> {
    if args.fido.fido {
        return crate::fido::command::setup(&args);
    }
    use crate::token::owner::{Owner, SignContext};
    use crate::token::GenerateRequest;
    use crate::token::Secret;
    // New secrets are read here, by the command the user runs, before any card work.
    let change_pin = if args.change_pin {
        Some(secret_change(Secret::Pin, args.pin_file.as_deref(), args.new_pin_file.as_deref(), args.pinentry.as_deref())?)
    } else {
        None
    };
    let change_puk = if args.change_puk {
        Some(secret_change(Secret::Puk, args.puk_file.as_deref(), args.new_puk_file.as_deref(), args.pinentry.as_deref())?)
    } else {
        None
    };
    // The running agent owns the tokens: go through it when SSH_AUTH_SOCK is keytap's (unless
    // --token or --state-dir names a token to open directly).
    if let Some((mut client, _)) = crate::command::agent_for(&args.token) {
        // The agent asks for the PIN with its own sources; say so instead of ignoring the flags.
        if args.pin_file.is_some() && !args.change_pin {
            eprintln!("keytap: note: --pin-file is not used: the running agent asks for the PIN from its own source (its --pin-file, the keytap-pin credential or pinentry); add --token to open the token directly");
        }
        if args.pinentry.is_some() && !(args.change_pin || args.change_puk) {
            eprintln!("keytap: note: --pinentry is not used: the running agent asks for the PIN with its own pinentry; add --token to open the token directly");
        }
        use crate::agent::setup_ext::{decode_json, encode_json, SetupAnswer, SetupRequest, EXT_SETUP};
        let request = SetupRequest {
            change_pin,
            change_puk,
            no_key: args.no_key,
            serial: args.serial,
            slot: args.slot,
            algorithm: args.alg,
            pin_policy: args.pin_policy,
            touch_policy: args.touch,
            force: args.force,
            protect_management_key: args.protect_management_key,
        };
        let details = client.extension(EXT_SETUP, encode_json(&request))?;
        return match decode_json::<SetupAnswer>(&details).map_err(|e| AppError::Message(format!("unexpected answer from the agent: {e}")))? {
            SetupAnswer::Created(key, protected, notes) => {
                if let Some(protected) = protected {
                    report_protected(protected);
                }
                if let Some(key) = key {
                    println!(
                        "Created a {} key in slot {} of token {} (pin={}, touch={}), generated on the token (through the agent).",
                        key.algorithm, key.slot, key.serial, key.pin_policy, key.touch_policy
                    );
                    println!("Add this line to ~/.ssh/authorized_keys on the servers you log in to:");
                    println!("{}", key.authorized_key);
                }
                for note in notes {
                    println!("{note}");
                }
                Ok(())
            }
            SetupAnswer::Refused(reason) => Err(AppError::Message(format!("the agent refused: {reason}"))),
        };
    }
    let mut tokens = open_tokens(&args.token)?;
    let token = match args.serial {
        Some(serial) => {
            let i = tokens
                .iter_mut()
                .position(|t| t.info().map(|i| i.serial == serial).unwrap_or(false))
                .ok_or_else(|| AppError::Message(format!("no token with serial {serial} is connected; `keytap list` shows them")))?;
            tokens.swap_remove(i)
        }
        None if tokens.len() == 1 => tokens.pop().expect("one token"),
        None => {
            let serials: Vec<String> =
                tokens.iter_mut().filter_map(|t| t.info().ok()).map(|i| i.serial.to_string()).collect();
            return Err(AppError::Message(format!(
                "{} tokens are connected ({}); choose one with --serial",
                serials.len(),
                serials.join(", ")
            )));
        }
    };
    let prompter: Arc<dyn Prompter> = Arc::new(SystemPrompter::new(args.pin_file.clone(), args.pinentry.clone(), None));
    let mut owner = Owner::new(token, prompter);
    let info = owner.token.info()?;
    let key_slot = (!args.no_key).then_some(args.slot);
    let context = SignContext {
        requester: "keytap setup".into(),
        purpose: crate::agent::setup_ext::purpose(key_slot, args.protect_management_key, change_pin.is_some(), change_puk.is_some()),
        // No requester terminal: the prompter uses this command's own.
        ..Default::default()
    };
    let plan = crate::agent::setup_ext::Plan {
        generate: key_slot.map(|slot| GenerateRequest { slot, algorithm: args.alg, pin_policy: args.pin_policy, touch_policy: args.touch }),
        force: args.force,
        protect_management_key: args.protect_management_key,
        change_pin,
        change_puk,
    };
    let done = crate::agent::setup_ext::perform(&mut owner, plan, &context).map_err(AppError::Message)?;
    if let Some(protected) = done.protected {
        report_protected(protected);
    }
    if let Some(key) = &done.key {
        println!(
            "Created a {} key in slot {} of token {} (pin={}, touch={}), generated on the token.",
            key.algorithm, key.slot, info.serial, key.pin_policy, key.touch_policy
        );
        println!("Add this line to ~/.ssh/authorized_keys on the servers you log in to:");
        println!("{}", key.authorized_key());
    }
    for note in done.notes {
        println!("{note}");
    }
    Ok(())
}

/// The current and the new PIN or PUK: from files (mode 0600) or pinentry (the new one twice).
fn secret_change(
    which: crate::token::Secret,
    current_file: Option<&Path>,
    new_file: Option<&Path>,
    pinentry: Option<&str>,
) -> Result<crate::agent::setup_ext::SecretChange, AppError> {
    use crate::prompt::{ask_with_pinentry, read_pin_file};
    let ask = |desc: &str| -> Result<crate::token::Pin, AppError> {
        ask_with_pinentry(pinentry, desc, &format!("{which}:"))
            .map_err(|e| AppError::Message(format!("cannot ask for the {which}: {e}")))?
            .ok_or_else(|| AppError::Message(format!("no {which} was given (cancelled)")))
    };
    let read = |path: &Path| read_pin_file(path).map_err(|e| AppError::Message(e.to_string()));
    let current = match current_file {
        Some(path) => read(path)?,
        None => ask(&format!("Enter the CURRENT {which} of the YubiKey."))?,
    };
    let new = match new_file {
        Some(path) => read(path)?,
        None => {
            let new = ask(&format!("Choose a NEW {which} (6 to 8 characters)."))?;
            let again = ask(&format!("Enter the new {which} again."))?;
            if new != again {
                return Err(AppError::Message(format!("the two new {which}s differ; nothing was changed")));
            }
            new
        }
    };
    crate::token::check_new_secret(which, &new)?;
    Ok(crate::agent::setup_ext::SecretChange { current, new })
}
