//! `exchange_key`: a validator hands us its Fernet key, wrapped with our RSA key and signed.
//!
//! Checks run cheapest first, and each one a peer can trigger for free is bounded:
//! shape (lengths capped, the timestamp text at [`MAX_TIMESTAMP_TEXT`] bytes) → authorization and
//! the caller address's own rate limit → under `STRICT_VALIDATOR_ADDRESSES`, the address against
//! the validator's reported ones → timestamp age → sr25519 signature (on a bounded blocking pool)
//! → **the nonce is spent** → the validator's budget → RSA (on its own bounded pool) → the key is
//! stored with the exchange's address.
//!
//! The signature covers `"{ts}.{nonce}.{validator}"` only — not our hotkey, the uuid or the
//! ciphertext — so every miner a validator talks to holds exchanges that verify here. Hence:
//! * spending the nonce before RSA makes a replayed exchange cost no RSA work, and spending it
//!   before the validator's budget makes a replay cost that validator nothing (a replay from any
//!   number of addresses is one signature check each, then 400);
//! * a *relayed* exchange (one the validator sent another miner, its key swapped for one the
//!   relayer chose) has an unspent nonce and is accepted, but the key it makes is tied to the
//!   relayer's address: its challenges spend that address's budget and in-flight share, never the
//!   share of the address the validator itself exchanges from ([`crate::front_door::share`]).

use std::net::IpAddr;
use std::time::Duration;

use super::rate_limit::Route;
use super::FrontDoor;
use crate::authorization::AddressStanding;
use crate::protocol::fernet_codec::FernetKey;
use crate::protocol::messages::{unix_time_f64, KeyExchangeRequest};
use crate::protocol::signature::{verify_any, SignatureError};
use crate::rsa_pool::RsaPoolError;
use crate::session::key_session::StoreError;
use crate::session::known_peers::Recorded;
use crate::session::registry::KeyStoreError;

/// Longest timestamp text accepted: `1795565301.503868` is 17 bytes; Python never writes more than
/// about 24. A cap keeps the float parser and the signed message small whatever a peer sends.
pub const MAX_TIMESTAMP_TEXT: usize = 32;

/// How long an exchange waits for a signature-check slot before it is refused as busy.
const VERIFY_SLOT_WAIT: Duration = Duration::from_millis(500);

/// Why a key exchange was refused. Statuses follow PROTOCOL.md (mapped in `src/http/error.rs`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyExchangeError {
    #[error("{0}")]
    Malformed(String),
    #[error("Validator hotkey not recognized.")]
    Forbidden,
    #[error("{0}")]
    StaleTimestamp(String),
    #[error("invalid signature: {0}")]
    BadSignature(SignatureError),
    #[error("nonce already used")]
    Replay,
    #[error("Failed to exchange symmetric key")]
    KeyUnwrap,
    #[error("too many key exchanges from this validator; retry later")]
    TooManyExchanges { retry_after_secs: u64 },
    /// `STRICT_VALIDATOR_ADDRESSES`: the validator's exchange came from an address that neither the
    /// Challenge API nor the chain reports for it.
    #[error("key exchanges from this validator are accepted only from its reported addresses")]
    AddressNotReported,
    /// The uuid names a live key made by an exchange from another address.
    #[error("symmetric_key_uuid is in use; choose another")]
    UuidTaken,
    /// Over a rate limit (per IP, or per verified hotkey).
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// A bounded pool (RSA or signature checks) is full: retry shortly.
    #[error("the miner is busy with other key exchanges; retry shortly")]
    Busy { retry_after_secs: u64 },
    /// Something internal did not answer in time (a key session): our fault, not the validator's.
    #[error("key store unavailable: {0}")]
    Unavailable(String),
}

impl KeyExchangeError {
    /// The `loosh_handshakes_total` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Forbidden => "unauthorized",
            Self::AddressNotReported => "address_not_reported",
            Self::UuidTaken => "uuid_taken",
            Self::StaleTimestamp(_) => "stale_timestamp",
            Self::BadSignature(_) => "bad_signature",
            Self::Replay => "replay",
            Self::KeyUnwrap => "bad_key",
            Self::TooManyExchanges { .. } | Self::Busy { .. } => "busy",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable(_) => "unavailable",
        }
    }
}

impl FrontDoor {
    /// Runs one `POST /fiber/key-exchange` body through every check and, when all pass, makes the
    /// validator's key live. Returns the validator's hotkey.
    /// `peer` is the client's IP, for the per-IP rate limit (checked once the body names a hotkey,
    /// which selects the validator budget).
    pub async fn exchange_key(&self, body: &[u8], peer: Option<IpAddr>) -> Result<String, KeyExchangeError> {
        let result = self.exchange_key_inner(body, peer).await;
        let outcome = result.as_ref().map_or_else(KeyExchangeError::outcome, |_| "ok");
        self.metrics().handshakes.with_label_values(&[outcome]).inc();
        result
    }

    async fn exchange_key_inner(&self, body: &[u8], peer: Option<IpAddr>) -> Result<String, KeyExchangeError> {
        let ke: KeyExchangeRequest = serde_json::from_slice(body)
            .map_err(|e| KeyExchangeError::Malformed(format!("key-exchange body is not the expected JSON: {e}")))?;
        let hotkey = ke.validator_hotkey_ss58.trim().to_string();
        if ke.symmetric_key_uuid.is_empty()
            || ke.symmetric_key_uuid.len() > 128
            || ke.nonce.is_empty()
            || ke.nonce.len() > 256
            || hotkey.len() > 64
        {
            return Err(KeyExchangeError::Malformed(
                "symmetric_key_uuid, nonce and validator_hotkey_ss58 must be non-empty and short".into(),
            ));
        }
        if ke.timestamp.get().len() > MAX_TIMESTAMP_TEXT {
            return Err(KeyExchangeError::Malformed(format!(
                "timestamp must be at most {MAX_TIMESTAMP_TEXT} characters of unix seconds"
            )));
        }
        let allowed = self.auth.is_allowed(&hotkey);
        // The caller's own address budget: a flood from one address spends that address's.
        self.check_ip_rate(Route::KeyExchange, peer, allowed)
            .map_err(|retry_after_secs| KeyExchangeError::RateLimited { retry_after_secs })?;
        if !allowed {
            return Err(KeyExchangeError::Forbidden);
        }
        let standing = peer.map(|ip| self.auth.address_standing(&hotkey, ip));
        if standing == Some(AddressStanding::Refused) {
            return Err(KeyExchangeError::AddressNotReported);
        }

        let s = &self.door;
        let ts = ke
            .timestamp_secs()
            .ok_or_else(|| KeyExchangeError::StaleTimestamp("timestamp must be a number of unix seconds".into()))?;
        let now = unix_time_f64();
        if now - ts > s.max_timestamp_age.as_secs_f64() {
            return Err(KeyExchangeError::StaleTimestamp(format!(
                "timestamp is {:.0} s old; key exchanges older than {} s are refused (check the validator's clock)",
                now - ts,
                s.max_timestamp_age.as_secs()
            )));
        }
        if ts - now > s.max_timestamp_ahead.as_secs_f64() {
            return Err(KeyExchangeError::StaleTimestamp(format!(
                "timestamp is {:.0} s in the future; more than {} s ahead is refused (check the clocks)",
                ts - now,
                s.max_timestamp_ahead.as_secs()
            )));
        }

        self.verify_signature(&hotkey, ke.candidate_signed_messages(), ke.signature.clone()).await?;

        // The exchange is genuine: spend its nonce now, before any RSA work. It is remembered until
        // the timestamp itself falls out of the accepted window, so a future-stamped exchange cannot
        // be replayed after a shorter memory expires.
        let ahead = Duration::from_secs_f64((ts - now).max(0.0));
        let remember_for = ahead + s.max_timestamp_age;
        self.keys().spend_nonce(&hotkey, &ke.nonce, remember_for).await.map_err(|e| match e {
            KeyStoreError::Refused(StoreError::ReplayedNonce) => KeyExchangeError::Replay,
            KeyStoreError::Refused(StoreError::TooManyExchanges) => {
                KeyExchangeError::TooManyExchanges { retry_after_secs: s.max_timestamp_age.as_secs().max(1) }
            }
            KeyStoreError::Refused(StoreError::UuidTaken) => KeyExchangeError::UuidTaken,
            KeyStoreError::Unavailable(e) => KeyExchangeError::Unavailable(e),
        })?;
        // Genuine and first seen: only now does it spend a budget, the one of the validator's
        // share this address belongs to.
        let share = self.share_of(&hotkey, peer);
        self.check_hotkey_rate(&share.bucket)
            .map_err(|retry_after_secs| KeyExchangeError::RateLimited { retry_after_secs })?;

        let key_text = self.rsa.unwrap_key(ke.encrypted_symmetric_key).await.map_err(|e| match e {
            RsaPoolError::Full => KeyExchangeError::Busy { retry_after_secs: 1 },
            RsaPoolError::Unwrap(_) => KeyExchangeError::KeyUnwrap,
        })?;
        let key = FernetKey::from_key_text(&key_text).map_err(|_| KeyExchangeError::KeyUnwrap)?;
        self.keys().store_key(&hotkey, &ke.symmetric_key_uuid, key, peer).await.map_err(|e| match e {
            KeyStoreError::Refused(StoreError::UuidTaken) => KeyExchangeError::UuidTaken,
            other => KeyExchangeError::Unavailable(other.to_string()),
        })?;
        if let Some(ip) = peer {
            self.note_exchange_address(&hotkey, ip, standing == Some(AddressStanding::Elsewhere));
        }
        Ok(hotkey)
    }

    /// Remembers the address a validator proved itself from, and counts (and logs, rate-limited)
    /// an address that is new for it: a validator that moved, or someone relaying its exchanges.
    fn note_exchange_address(&self, hotkey: &str, ip: IpAddr, elsewhere: bool) {
        let recorded = self.known_peers.record(hotkey, ip);
        let kind = match recorded {
            _ if elsewhere => "elsewhere",
            Recorded::First | Recorded::NotKept => "first",
            Recorded::Known => "known",
            Recorded::NewAddress => "new",
        };
        self.metrics().exchange_addresses.with_label_values(&[kind]).inc();
        if matches!(kind, "new" | "elsewhere") {
            if let Some(suppressed) = self.known_peers.admit_log() {
                tracing::warn!(
                    validator = %hotkey,
                    %ip,
                    kind,
                    suppressed,
                    "a validator's key exchange came from a new address (it moved, or its exchange was relayed); \
                     its challenges spend that address's share only"
                );
            }
        }
    }

    /// sr25519 verification off the async threads, at most `verify_slots` at once. A verification
    /// takes about 0.1 ms, so a short wait for a slot absorbs a burst (an honest exchange is not
    /// refused because a flood holds every slot for a moment); past [`VERIFY_SLOT_WAIT`] the pool
    /// is saturated and the exchange is refused with 503 rather than queued without bound.
    async fn verify_signature(
        &self,
        hotkey: &str,
        messages: Vec<String>,
        signature: String,
    ) -> Result<(), KeyExchangeError> {
        let permit = match tokio::time::timeout(VERIFY_SLOT_WAIT, self.verify_slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(KeyExchangeError::Busy { retry_after_secs: 1 }),
        };
        let hotkey = hotkey.to_string();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify_any(&hotkey, &messages, &signature)
        })
        .await
        .map_err(|e| KeyExchangeError::Unavailable(format!("signature check failed to run: {e}")))?
        .map_err(KeyExchangeError::BadSignature)
    }
}
