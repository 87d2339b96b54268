//! `keytap git setup` and `keytap authorized-key`: one command to make git sign with a token key.
//!
//! git's SSH signing needs three settings: `gpg.format=ssh`, `user.signingkey=key::<public
//! key>` (a literal key makes git ask the agent, `ssh-keygen -Y sign -U`) and an allowed-signers
//! file so `git verify-commit` and `git log --show-signature` can check the result.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::agent::KeyReport;
use crate::cli::{AuthorizedKeyArgs, GitSetupArgs};
use crate::command::{key_reports, AppError};
use crate::token::{KeySelector, Slot};

/// Pick the key `wanted` names (see [`KeySelector`]), or the first of `defaults` present (then
/// any key when `any_fallback`).
pub fn choose<'a>(keys: &'a [KeyReport], wanted: Option<&str>, defaults: &[Slot], any_fallback: bool) -> Result<&'a KeyReport, String> {
    if keys.is_empty() {
        return Err("no keys on any token; create one with `keytap setup --slot 9c` (signing) or `--slot 9a`".into());
    }
    if let Some(wanted) = wanted {
        let selector: KeySelector = wanted.parse()?;
        let location = |k: &KeyReport| k.slot.parse().ok().map(|slot| (k.serial, slot));
        let found: Vec<&KeyReport> = keys.iter().filter(|k| selector.matches(location(k), &k.fingerprint)).collect();
        return match found.as_slice() {
            [] => Err(format!("no key matches {selector}; `keytap list` shows the keys there are")),
            [one] => Ok(one),
            many => Err(format!(
                "{} keys match {selector} ({}); name one as SERIAL/SLOT or by fingerprint",
                many.len(),
                many.iter().map(|k| format!("{}/{}", k.serial, k.slot)).collect::<Vec<_>>().join(", ")
            )),
        };
    }
    for slot in defaults {
        if let Some(k) = keys.iter().find(|k| k.slot == slot.to_string()) {
            return Ok(k);
        }
    }
    if any_fallback {
        return Ok(&keys[0]);
    }
    let names: Vec<String> = defaults.iter().map(|s| s.to_string()).collect();
    Err(format!("no key in slot {}; pick one with --key SLOT (see `keytap list`)", names.join(" or ")))
}

/// `ssh-ed25519 AAAA...` without the comment.
pub fn key_literal(authorized_key: &str) -> String {
    authorized_key.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// The allowed-signers line for `email` and a key.
pub fn allowed_signers_line(email: &str, key: &str) -> String {
    format!("{email} namespaces=\"git\" {key}")
}

/// Does the allowed-signers text already trust `key` for `email`?
pub fn already_allowed(text: &str, email: &str, key: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim();
        !l.starts_with('#') && l.split_whitespace().next().is_some_and(|p| p.split(',').any(|p| p == email)) && l.contains(key)
    })
}

pub fn authorized_key(args: AuthorizedKeyArgs) -> Result<(), AppError> {
    let keys = key_reports(&args.token)?;
    let key = choose(&keys, args.key.as_deref(), &[Slot::AUTHENTICATION], true).map_err(AppError::Message)?;
    println!("{}", key.authorized_key);
    Ok(())
}

fn git(args: &[&str]) -> Result<std::process::Output, AppError> {
    Command::new("git").args(args).output().map_err(|e| AppError::Message(format!("cannot run git: {e}; install git and retry")))
}

/// `git config [scope] --get name`, None when unset.
fn git_get(scope: Option<&str>, name: &str) -> Result<Option<String>, AppError> {
    let mut args = vec!["config"];
    args.extend(scope);
    args.extend(["--get", name]);
    let out = git(&args)?;
    let value = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((out.status.success() && !value.is_empty()).then_some(value))
}

fn git_set(scope: &str, name: &str, value: &str) -> Result<(), AppError> {
    let out = git(&["config", scope, name, value])?;
    if !out.status.success() {
        return Err(AppError::Message(format!(
            "git config {scope} {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(p),
    }
}

pub fn setup(args: GitSetupArgs) -> Result<(), AppError> {
    let scope = if args.global { "--global" } else { "--local" };
    if !args.global && !git(&["rev-parse", "--git-dir"])?.status.success() {
        return Err(AppError::Message(
            "not inside a git repository; run this in the repository, or pass --global to set it up for every repository".into(),
        ));
    }
    let email = git_get(None, "user.email")?.ok_or_else(|| {
        AppError::Message(
            "git has no user.email, which the allowed-signers file needs; set it with `git config --global user.email you@example.com` and run this again".into(),
        )
    })?;
    let keys = key_reports(&args.token)?;
    let key = choose(&keys, args.key.as_deref(), &[Slot::SIGNATURE, Slot::AUTHENTICATION], false).map_err(AppError::Message)?;
    let literal = key_literal(&key.authorized_key);

    // Keep an allowed-signers file the user already has; otherwise keytap's own.
    let signers = match git_get(Some(scope), "gpg.ssh.allowedSignersFile")? {
        Some(existing) => expand_home(&existing),
        None => crate::paths::config_home().join("allowed_signers"),
    };
    let current = match std::fs::read_to_string(&signers) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(AppError::Message(format!("{}: cannot read it: {e}", signers.display()))),
    };
    let mut changes = Vec::new();
    if !already_allowed(&current, &email, &literal) {
        if let Some(dir) = signers.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut text = current.clone();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&allowed_signers_line(&email, &literal));
        text.push('\n');
        std::fs::write(&signers, text)?;
        changes.push(format!("added {email} with key {} to {}", key.fingerprint, signers.display()));
    }

    let mut settings = vec![
        ("gpg.format", "ssh".to_string()),
        ("user.signingkey", format!("key::{literal}")),
        ("gpg.ssh.allowedSignersFile", signers.display().to_string()),
    ];
    if args.sign_commits {
        settings.push(("commit.gpgsign", "true".into()));
        settings.push(("tag.gpgsign", "true".into()));
    }
    for (name, value) in &settings {
        let old = git_get(Some(scope), name)?;
        if old.as_deref() == Some(value.as_str()) {
            continue;
        }
        git_set(scope, name, value)?;
        changes.push(match old {
            Some(old) => format!("git config {scope} {name} = {value} (was {old})"),
            None => format!("git config {scope} {name} = {value}"),
        });
    }
    println!("signing key: slot {} of token {} ({})", key.slot, key.serial, key.fingerprint);
    if changes.is_empty() {
        println!("nothing to change: git is already set up for this key");
    }
    for c in &changes {
        println!("  {c}");
    }
    if !args.sign_commits {
        println!("sign with `git commit -S`, or pass --sign-commits to sign every commit and tag");
    }
    println!("add the key to your forge as a signing key: keytap authorized-key --key {}", key.slot);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(slot: &str, fp: &str) -> KeyReport {
        KeyReport {
            serial: 1,
            slot: slot.into(),
            algorithm: "p256".into(),
            pin_policy: "once".into(),
            touch_policy: "never".into(),
            fingerprint: fp.into(),
            authorized_key: format!("ssh-ed25519 AAAA{slot} keytap 1/{slot}"),
        }
    }

    #[test]
    fn choose_prefers_signature_slot_then_authentication() {
        let keys = vec![report("9a", "SHA256:a"), report("9c", "SHA256:c")];
        let defaults = [Slot::SIGNATURE, Slot::AUTHENTICATION];
        assert_eq!(choose(&keys, None, &defaults, false).unwrap().slot, "9c");
        assert_eq!(choose(&keys[..1], None, &defaults, false).unwrap().slot, "9a");
        let only_9e = vec![report("9e", "SHA256:e")];
        assert!(choose(&only_9e, None, &defaults, false).unwrap_err().contains("--key"));
        assert_eq!(choose(&only_9e, None, &[Slot::AUTHENTICATION], true).unwrap().slot, "9e");
        assert!(choose(&[], None, &defaults, true).unwrap_err().contains("keytap setup"));
    }

    #[test]
    fn choose_by_slot_serial_slot_or_fingerprint() {
        let fp_c = "SHA256:Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2M";
        let keys = vec![report("9a", "SHA256:a"), report("9c", fp_c)];
        assert_eq!(choose(&keys, Some("9a"), &[], false).unwrap().slot, "9a");
        assert_eq!(choose(&keys, Some("1/9c"), &[], false).unwrap().slot, "9c");
        assert_eq!(choose(&keys, Some(fp_c), &[], false).unwrap().slot, "9c");
        assert_eq!(choose(&keys, Some(&fp_c[7..]), &[], false).unwrap().slot, "9c", "SHA256: prefix is optional");
        assert!(choose(&keys, Some("9d"), &[], false).unwrap_err().contains("no key matches slot 9d"));
        assert!(choose(&keys, Some("2/9c"), &[], false).unwrap_err().contains("no key matches 2/9c"));
        assert!(choose(&keys, Some("SHA256:zz"), &[], false).unwrap_err().contains("no key matches SHA256:zz"));
        assert!(choose(&keys, Some("9z"), &[], false).unwrap_err().contains("invalid key"));
        // Two tokens with a key in the same slot: a slot alone is ambiguous.
        let mut two = keys.clone();
        two.push(KeyReport { serial: 2, ..report("9c", "SHA256:other") });
        let err = choose(&two, Some("9c"), &[], false).unwrap_err();
        assert!(err.contains("2 keys match slot 9c (1/9c, 2/9c)"), "{err}");
        assert_eq!(choose(&two, Some("2/9c"), &[], false).unwrap().fingerprint, "SHA256:other");
    }

    #[test]
    fn allowed_signers_lines() {
        let key = "ssh-ed25519 AAAAk";
        assert_eq!(key_literal("ssh-ed25519 AAAAk keytap 1/9c"), key);
        let line = allowed_signers_line("me@example.com", key);
        assert_eq!(line, "me@example.com namespaces=\"git\" ssh-ed25519 AAAAk");
        assert!(already_allowed(&format!("{line}\n"), "me@example.com", key));
        assert!(already_allowed("a@b,me@example.com ssh-ed25519 AAAAk\n", "me@example.com", key));
        assert!(!already_allowed(&line, "you@example.com", key));
        assert!(!already_allowed(&format!("#{line}"), "me@example.com", key));
        assert!(!already_allowed(&line, "me@example.com", "ssh-ed25519 AAAAother"));
    }
}
