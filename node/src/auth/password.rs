//! Passwords: argon2id hashes (RustCrypto's `argon2`, its default cost:
//! 19 MiB, 2 passes), computed by the node that takes the request so apply
//! stays deterministic, and checked on a blocking thread. At most
//! [`MAX_CONCURRENT_HASHES`] run at once per node, so a flood of
//! authentications cannot take every core (each costs tens of
//! milliseconds by design).

use std::sync::{Arc, LazyLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Password hashes computed or checked at once on one node.
pub const MAX_CONCURRENT_HASHES: usize = 2;
/// Shortest password accepted, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 1024;

static HASHING: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(MAX_CONCURRENT_HASHES)));

/// Random bytes from the operating system.
pub fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut b = vec![0; n];
    getrandom::getrandom(&mut b).map_err(|e| Error::Internal(format!("no OS randomness: {e}")))?;
    Ok(b)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let _permit = HASHING
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| Error::task("password hashing", e))?;
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::task("password hashing", e))
}

/// The PHC string of `password`'s argon2id hash, with a fresh salt.
pub async fn hash(password: &str) -> Result<String> {
    if password.len() < MIN_PASSWORD_BYTES || password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::invalid(
            "password",
            format!(
                "must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes, not {}",
                password.len()
            ),
        ));
    }
    let salt = SaltString::encode_b64(&random_bytes(16)?).map_err(|e| Error::Internal(format!("salt: {e}")))?;
    let password = password.to_owned();
    blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(format!("password hash: {e}")))
    })
    .await?
}

/// Whether `password` matches the PHC string `phc` (never for an empty
/// one: that user has no password login).
pub async fn verify(password: &str, phc: &str) -> Result<bool> {
    if phc.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Ok(false);
    }
    let (password, phc) = (password.to_owned(), phc.to_owned());
    blocking(move || {
        PasswordHash::new(&phc)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_differ() {
        let a = hash("correct horse").await.unwrap();
        let b = hash("correct horse").await.unwrap();
        assert_ne!(a, b, "fresh salt each time");
        assert!(verify("correct horse", &a).await.unwrap());
        assert!(!verify("wrong horse!", &a).await.unwrap());
        assert!(!verify("anything", "").await.unwrap());
        assert!(!verify("anything", "not a phc string").await.unwrap());
        let e = hash("short").await.unwrap_err();
        assert!(e.to_string().contains("password"), "{e}");
    }
}
