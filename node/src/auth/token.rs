//! Tokens: what `Auth/Authenticate` hands out for a user name and
//! password, sent back as `token` metadata on every request.
//!
//! A token is `esf1.USER.REV.EXPIRES.MAC`: the user (base64url), the auth
//! revision that last set the user's password, the expiry (unix seconds)
//! and an HMAC-SHA256 of the rest under the cluster's token key (kept in
//! the meta state machine, set anew by every `auth enable`). Any node
//! verifies it without a round trip. It stops working when it expires,
//! when the user is deleted or its password changes, or when auth is
//! enabled again (new key). Permissions are not in the token: each request
//! is checked against the user's roles as they are now, so revoking a
//! permission takes effect on the next request (unlike a JWT that carries
//! its claims, and unlike etcd's auth-revision check, which voids every
//! token on any auth change).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use esf_raft::meta::auth::AuthState;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

const PREFIX: &str = "esf1";

/// Longest token accepted, in bytes (a user name is at most 128 bytes).
pub const MAX_TOKEN_BYTES: usize = 512;

fn mac(key: &[u8], body: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    m.update(body.as_bytes());
    m
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token for `user` (who must exist in `state`), valid for `ttl`.
pub fn issue(state: &AuthState, user: &str, ttl: Duration) -> Result<String> {
    let u = state
        .users
        .get(user)
        .ok_or_else(|| Error::Unauthenticated(format!("user {user:?} does not exist")))?;
    let body = format!(
        "{PREFIX}.{}.{}.{}",
        B64.encode(user),
        u.password_revision,
        now_secs().saturating_add(ttl.as_secs())
    );
    let sig = B64.encode(mac(&state.head.token_key, &body).finalize().into_bytes());
    Ok(format!("{body}.{sig}"))
}

/// The user `token` stands for, if it is genuine, unexpired, and its user
/// still exists with the same password.
pub fn verify(state: &AuthState, token: &str) -> Result<String> {
    let bad = |why: &str| Error::Unauthenticated(format!("token: {why}; authenticate again"));
    if token.len() > MAX_TOKEN_BYTES {
        return Err(bad("too long"));
    }
    let (body, sig) = token.rsplit_once('.').ok_or_else(|| bad("malformed"))?;
    let parts: Vec<&str> = body.split('.').collect();
    let [prefix, user, rev, expires] = parts[..] else {
        return Err(bad("malformed"));
    };
    if prefix != PREFIX {
        return Err(bad("not an ESF token"));
    }
    let sig = B64.decode(sig).map_err(|_| bad("malformed signature"))?;
    mac(&state.head.token_key, body)
        .verify_slice(&sig)
        .map_err(|_| bad("invalid signature (forged, or issued before auth was last enabled)"))?;
    let user = B64
        .decode(user)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| bad("malformed user"))?;
    let expires: u64 = expires.parse().map_err(|_| bad("malformed expiry"))?;
    if now_secs() >= expires {
        return Err(bad("expired"));
    }
    let rev: u64 = rev.parse().map_err(|_| bad("malformed revision"))?;
    match state.users.get(&user) {
        Some(u) if u.password_revision == rev => Ok(user),
        Some(_) => Err(bad("the user's password changed since it was issued")),
        None => Err(bad("the user no longer exists")),
    }
}

#[cfg(test)]
mod tests {
    use esf_raft::meta::auth::{AuthHead, User};

    use super::*;

    fn state(key: u8, rev: u64) -> AuthState {
        let mut s = AuthState {
            head: AuthHead {
                enabled: true,
                revision: 9,
                token_key: vec![key; 32],
            },
            ..AuthState::default()
        };
        s.users.insert(
            "alice".into(),
            User {
                name: "alice".into(),
                password_hash: String::new(),
                roles: vec![],
                password_revision: rev,
            },
        );
        s
    }

    #[test]
    fn tokens_verify_until_key_password_or_expiry_change() {
        let s = state(1, 3);
        let t = issue(&s, "alice", Duration::from_secs(60)).unwrap();
        assert_eq!(verify(&s, &t).unwrap(), "alice");
        // Another key (auth enabled again), another password revision.
        assert!(verify(&state(2, 3), &t).is_err());
        assert!(verify(&state(1, 4), &t).is_err());
        // Expired.
        let old = issue(&s, "alice", Duration::ZERO).unwrap();
        assert!(verify(&s, &old).is_err());
        // Tampered: another user name under the same signature.
        let forged = t.replacen(&B64.encode("alice"), &B64.encode("root"), 1);
        assert!(verify(&s, &forged).is_err());
        for junk in ["", "esf1", "a.b.c.d.e", &"x".repeat(600)] {
            assert!(verify(&s, junk).is_err(), "{junk:?}");
        }
        assert!(issue(&s, "bob", Duration::from_secs(1)).is_err());
    }
}
