//! LOCK/UNLOCK: the passphrase is kept only as a slow (Argon2id) hash, and wrong unlock
//! attempts are slowed down, one at a time.

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

#[derive(Default)]
struct LockState {
    /// PHC string of the passphrase hash while locked.
    hash: Option<String>,
    failures: u32,
}

/// The agent's lock.
#[derive(Default)]
pub struct AgentLock {
    state: Mutex<LockState>,
    /// Fast path for "is it locked?" without awaiting the mutex.
    locked: std::sync::atomic::AtomicBool,
}

/// Delay after the n-th wrong passphrase: 100 ms more each time, at most 10 s (as OpenSSH).
pub fn unlock_delay(failures: u32) -> Duration {
    Duration::from_millis(100 * failures.min(100) as u64)
}

impl AgentLock {
    pub fn is_locked(&self) -> bool {
        self.locked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lock with a passphrase. Fails when already locked.
    pub async fn lock(&self, passphrase: Zeroizing<String>) -> bool {
        let mut state = self.state.lock().await;
        if state.hash.is_some() {
            return false;
        }
        let hashed = tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut rand_core::OsRng);
            Argon2::default().hash_password(passphrase.as_bytes(), &salt).map(|h| h.to_string())
        })
        .await;
        match hashed {
            Ok(Ok(hash)) => {
                state.hash = Some(hash);
                state.failures = 0;
                self.locked.store(true, std::sync::atomic::Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// Unlock. A wrong passphrase is answered only after a growing delay; attempts are
    /// serialised, so parallel guessing is no faster.
    pub async fn unlock(&self, passphrase: Zeroizing<String>) -> bool {
        let mut state = self.state.lock().await;
        let Some(hash) = state.hash.clone() else { return false };
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| Argon2::default().verify_password(passphrase.as_bytes(), &parsed).is_ok())
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok {
            state.hash = None;
            state.failures = 0;
            self.locked.store(false, std::sync::atomic::Ordering::SeqCst);
            true
        } else {
            state.failures += 1;
            let delay = unlock_delay(state.failures);
            tracing::warn!(failures = state.failures, "wrong unlock passphrase; next answer in {delay:?}");
            tokio::time::sleep(delay).await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lock_unlock_cycle() {
        let lock = AgentLock::default();
        assert!(!lock.is_locked());
        assert!(lock.lock(Zeroizing::new("pw".into())).await);
        assert!(lock.is_locked());
        assert!(!lock.lock(Zeroizing::new("other".into())).await, "second lock must fail");
        assert!(!lock.unlock(Zeroizing::new("wrong".into())).await);
        assert!(lock.is_locked());
        assert!(lock.unlock(Zeroizing::new("pw".into())).await);
        assert!(!lock.is_locked());
        assert!(!lock.unlock(Zeroizing::new("pw".into())).await, "unlocking an unlocked agent fails");
    }

    #[test]
    fn delay_grows_and_is_capped() {
        assert_eq!(unlock_delay(1), Duration::from_millis(100));
        assert_eq!(unlock_delay(5), Duration::from_millis(500));
        assert_eq!(unlock_delay(1000), Duration::from_secs(10));
    }
}
