//! Fernet both ways on the challenge channel, with the reason a token was refused.
//!
//! The `fernet` crate does the cryptography; it reports every failure as one opaque error. A miner
//! operator debugging a validator's 401s needs to know whether the token was stale, stamped in the
//! future (a clock problem on one side) or simply not made with this key, so the header is read here
//! first and the reason kept.

use base64::Engine;
use thiserror::Error;

/// Seconds a token may be stamped ahead of our clock, as Python's `cryptography` allows.
pub const MAX_CLOCK_SKEW_SECS: u64 = 60;

/// Why a Fernet token was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FernetError {
    #[error("the symmetric key is not 32 bytes of URL-safe base64")]
    BadKey,
    #[error("the body is not a Fernet token")]
    Malformed,
    #[error("the token is {age_secs} s old, older than the {ttl_secs} s TTL")]
    Expired { age_secs: u64, ttl_secs: u64 },
    #[error("the token is stamped {ahead_secs} s in the future (clock skew over 60 s)")]
    FromFuture { ahead_secs: u64 },
    #[error("the token was not made with this key (HMAC mismatch)")]
    WrongKey,
}

/// A validator's symmetric key, as the 44-byte URL-safe base64 text it sent us.
#[derive(Clone)]
pub struct FernetKey {
    inner: fernet::Fernet,
}

impl std::fmt::Debug for FernetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("FernetKey(..)")
    }
}

impl FernetKey {
    /// Parses the key text the validator wrapped with RSA (padded or not).
    pub fn from_key_text(text: &str) -> Result<Self, FernetError> {
        let text = text.trim();
        if text.is_empty() || text.len() > 64 {
            return Err(FernetError::BadKey);
        }
        fernet::Fernet::new(text).map(|inner| Self { inner }).ok_or(FernetError::BadKey)
    }

    /// Makes a fresh random key (used by the probe and tests acting as a validator).
    pub fn generate() -> (String, Self) {
        let text = fernet::Fernet::generate_key();
        let key = Self::from_key_text(&text).expect("generated keys are valid");
        (text, key)
    }

    /// Decrypts `token` (with or without `=` padding) as of `now_secs`.
    pub fn decrypt_at(&self, token: &[u8], ttl_secs: u64, now_secs: u64) -> Result<Vec<u8>, FernetError> {
        let token = std::str::from_utf8(token).map_err(|_| FernetError::Malformed)?.trim();
        let stamped = token_timestamp(token)?;
        if stamped.saturating_add(ttl_secs) < now_secs {
            return Err(FernetError::Expired { age_secs: now_secs - stamped, ttl_secs });
        }
        if now_secs.saturating_add(MAX_CLOCK_SKEW_SECS) < stamped {
            return Err(FernetError::FromFuture { ahead_secs: stamped - now_secs });
        }
        self.inner.decrypt_at_time(token, Some(ttl_secs), now_secs).map_err(|_| FernetError::WrongKey)
    }

    /// Decrypts `token` against the wall clock.
    pub fn decrypt(&self, token: &[u8], ttl_secs: u64) -> Result<Vec<u8>, FernetError> {
        self.decrypt_at(token, ttl_secs, unix_now())
    }

    /// Encrypts `plaintext` into a padded token stamped now.
    pub fn encrypt(&self, plaintext: &[u8]) -> String {
        self.inner.encrypt(plaintext)
    }

    /// Encrypts `plaintext` into a padded token stamped `unix_secs` (a reply stamped on the
    /// validator's clock rather than ours: see [`reply_timestamp`]).
    pub fn encrypt_at(&self, plaintext: &[u8], unix_secs: u64) -> String {
        self.inner.encrypt_at_time(plaintext, unix_secs)
    }
}

/// The seconds stamped into a token (by the clock of whoever encrypted it).
pub fn stamped_at(token: &[u8]) -> Result<u64, FernetError> {
    token_timestamp(std::str::from_utf8(token).map_err(|_| FernetError::Malformed)?.trim())
}

/// The time to stamp a reply with: ours, but never later than the challenge token's stamp plus
/// the whole seconds since it arrived — the validator's clock as best we know it. The validator
/// refuses a reply stamped more than 60 s in its future, re-handshakes and resends until its own
/// 60 s cancel, so a miner whose clock runs ahead would lose every challenge; one whose clock runs
/// behind is harmless (the TTL is an hour).
pub fn reply_timestamp(challenge_stamp: u64, since_arrival: std::time::Duration, now: u64) -> u64 {
    now.min(challenge_stamp.saturating_add(since_arrival.as_secs()))
}

/// Reads the big-endian seconds stamped into a token, checking its shape on the way.
fn token_timestamp(token: &str) -> Result<u64, FernetError> {
    // Version (1) + time (8) + IV (16) + one AES block (16) + HMAC (32).
    const MIN_LEN: usize = 1 + 8 + 16 + 16 + 32;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| FernetError::Malformed)?;
    if raw.len() < MIN_LEN || raw[0] != 0x80 || (raw.len() - 1 - 8 - 16 - 32) % 16 != 0 {
        return Err(FernetError::Malformed);
    }
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&raw[1..9]);
    Ok(u64::from_be_bytes(stamp))
}

/// Unix seconds now; a clock before 1970 reads as 0 rather than panicking.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_never_stamped_ahead_of_the_validators_clock() {
        let (_, key) = FernetKey::generate();
        let arrived = std::time::Duration::from_secs(3);
        // Our clock 600 s ahead of the validator's: the reply carries its time, not ours.
        assert_eq!(reply_timestamp(1_000, arrived, 1_603), 1_003);
        // Our clock behind: ours (earlier) is kept.
        assert_eq!(reply_timestamp(1_000, arrived, 990), 990);
        let token = key.encrypt_at(b"reply", 1_003);
        assert_eq!(stamped_at(token.as_bytes()), Ok(1_003));
        assert_eq!(key.decrypt_at(token.as_bytes(), 3600, 1_010).unwrap(), b"reply");
    }

    #[test]
    fn round_trips_and_names_failures() {
        let (_, key) = FernetKey::generate();
        let token = key.encrypt(b"hello");
        assert!(token.starts_with("gAAAAA"));
        assert_eq!(key.decrypt(token.as_bytes(), 3600).unwrap(), b"hello");
        let unpadded = token.trim_end_matches('=');
        assert_eq!(key.decrypt(unpadded.as_bytes(), 3600).unwrap(), b"hello");
        let (_, other) = FernetKey::generate();
        assert_eq!(other.decrypt(token.as_bytes(), 3600), Err(FernetError::WrongKey));
        assert_eq!(key.decrypt(b"not-a-token", 3600), Err(FernetError::Malformed));
        assert_eq!(key.decrypt(&[0xff, 0xfe], 3600), Err(FernetError::Malformed));
        let now = unix_now();
        assert!(matches!(key.decrypt_at(token.as_bytes(), 10, now + 100), Err(FernetError::Expired { .. })));
        assert!(matches!(key.decrypt_at(token.as_bytes(), 10, now - 100), Err(FernetError::FromFuture { .. })));
        assert!(FernetKey::from_key_text("short").is_err());
        assert_eq!(format!("{key:?}"), "FernetKey(..)");
    }
}
