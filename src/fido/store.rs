//! The sk keys loaded into the agent (`ssh-add`), kept across restarts in a state file that holds
//! only public keys, flags, key handles, comments and the device last seen holding each.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use ssh_key::public::KeyData;

use super::SkKey;

/// `$XDG_STATE_HOME/keytap/fido-keys.json`.
pub fn default_path() -> PathBuf {
    crate::paths::state_home().join("fido-keys.json")
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    keys: Vec<SkKey>,
}

/// The loaded keys: readers never wait for the disk; changes are written through at once.
#[derive(Clone)]
pub struct SkStore {
    path: PathBuf,
    keys: Arc<RwLock<Arc<Vec<SkKey>>>>,
}

impl SkStore {
    /// Read the state file; a missing one is an empty store.
    pub fn open(path: &Path) -> Result<SkStore, String> {
        let keys = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str::<File>(&text).map_err(|e| format!("{}: {e}; move it aside to start with no sk keys", path.display()))?.keys,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(SkStore { path: path.to_path_buf(), keys: Arc::new(RwLock::new(Arc::new(keys))) })
    }

    pub fn keys(&self) -> Arc<Vec<SkKey>> {
        self.keys.read().expect("sk store lock").clone()
    }

    pub fn find(&self, public_key: &KeyData) -> Option<SkKey> {
        self.keys().iter().find(|k| &k.public_key == public_key).cloned()
    }

    /// Apply a change and write the file (blocking: call from a blocking thread).
    fn change(&self, f: impl FnOnce(&mut Vec<SkKey>) -> bool) -> Result<bool, String> {
        let mut guard = self.keys.write().expect("sk store lock");
        let mut keys = (**guard).clone();
        if !f(&mut keys) {
            return Ok(false);
        }
        write_private(&self.path, &serde_json::to_string_pretty(&File { keys: keys.clone() }).expect("keys serialise"))?;
        *guard = Arc::new(keys);
        Ok(true)
    }

    /// Add or replace (same public key) a key.
    pub fn add(&self, key: SkKey) -> Result<(), String> {
        self.change(|keys| {
            match keys.iter_mut().find(|k| k.public_key == key.public_key) {
                Some(existing) => {
                    let device = existing.device.take();
                    *existing = SkKey { device: key.device.clone().or(device), ..key };
                }
                None => keys.push(key),
            }
            true
        })
        .map(|_| ())
    }

    /// Remove one key; `false` when it was not loaded.
    pub fn remove(&self, public_key: &KeyData) -> Result<bool, String> {
        self.change(|keys| {
            let before = keys.len();
            keys.retain(|k| &k.public_key != public_key);
            keys.len() != before
        })
    }

    pub fn remove_all(&self) -> Result<usize, String> {
        let mut n = 0;
        self.change(|keys| {
            n = keys.len();
            keys.clear();
            n > 0
        })?;
        Ok(n)
    }

    /// Remember which device answered for a key (no write when unchanged).
    pub fn set_device(&self, public_key: &KeyData, device: &str) -> Result<(), String> {
        self.change(|keys| match keys.iter_mut().find(|k| &k.public_key == public_key) {
            Some(k) if k.device.as_deref() != Some(device) => {
                k.device = Some(device.to_string());
                true
            }
            _ => false,
        })
        .map(|_| ())
    }
}

/// Write a file readable only by us, atomically (temp file + rename).
fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| format!("cannot write {}: {e}; check that its directory is writable", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SkKey {
        let pk = ssh_key::public::SkEd25519::new(ssh_key::public::Ed25519PublicKey([n; 32]), "ssh:");
        SkKey { public_key: KeyData::SkEd25519(pk), flags: 1, key_handle: vec![n; 40], comment: format!("k{n}"), device: None }
    }

    #[test]
    fn keys_survive_a_restart_and_hold_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/fido-keys.json");
        let store = SkStore::open(&path).unwrap();
        store.add(key(1)).unwrap();
        store.add(key(2)).unwrap();
        store.set_device(&key(2).public_key, "unix:/x").unwrap();
        let again = SkStore::open(&path).unwrap();
        assert_eq!(again.keys().len(), 2);
        assert_eq!(again.find(&key(2).public_key).unwrap().device.as_deref(), Some("unix:/x"));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert!(again.remove(&key(1).public_key).unwrap());
        assert!(!again.remove(&key(1).public_key).unwrap());
        assert_eq!(SkStore::open(&path).unwrap().keys().len(), 1);
        assert_eq!(again.remove_all().unwrap(), 1);
        assert!(SkStore::open(&path).unwrap().keys().is_empty());
    }
}
