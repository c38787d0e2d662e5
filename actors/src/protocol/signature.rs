//! sr25519 identities: SS58 addresses and the key-exchange signature check.
//!
//! Verification runs before any RSA work because it is the cheap check: a flood of forged
//! key exchanges costs us a few microseconds each, not a private-key operation.

use subxt::utils::AccountId32;
use subxt_signer::sr25519;
use thiserror::Error;

/// Bittensor's SS58 network prefix ("substrate generic"), used when we print our own hotkey.
pub const BITTENSOR_SS58_PREFIX: u16 = 42;

/// Why an address or signature was refused.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("not a valid SS58 address")]
    BadAddress,
    #[error("signature must be 0x followed by 128 hex characters")]
    BadSignatureFormat,
    #[error("signature does not verify for this hotkey")]
    Invalid,
}

/// Decodes an SS58 address of any network prefix into the 32-byte public key, checking its
/// checksum (subxt's `AccountId32`, the chain client's own type).
pub fn ss58_decode(address: &str) -> Result<[u8; 32], SignatureError> {
    address.trim().parse::<AccountId32>().map(|account| account.0).map_err(|_| SignatureError::BadAddress)
}

/// Encodes a public key as SS58 with Bittensor's prefix ([`BITTENSOR_SS58_PREFIX`], substrate's
/// generic 42, which is what subxt's `AccountId32` prints).
pub fn ss58_encode(public: &[u8; 32]) -> String {
    AccountId32(*public).to_string()
}

/// Parses `0x` + 128 hex characters; the `0x` is required, as the Python miner requires it.
pub fn parse_signature(text: &str) -> Result<sr25519::Signature, SignatureError> {
    let hex_part = text.strip_prefix("0x").ok_or(SignatureError::BadSignatureFormat)?;
    let bytes = hex::decode(hex_part).map_err(|_| SignatureError::BadSignatureFormat)?;
    let arr: [u8; 64] = bytes.try_into().map_err(|_| SignatureError::BadSignatureFormat)?;
    Ok(sr25519::Signature(arr))
}

/// Verifies `signature` by `ss58` over `message`, also accepting the `<Bytes>…</Bytes>` wrapping that
/// polkadot.js wallets sign.
pub fn verify_sr25519(ss58: &str, message: &str, signature: &str) -> Result<(), SignatureError> {
    let public = sr25519::PublicKey(ss58_decode(ss58)?);
    let sig = parse_signature(signature)?;
    if sr25519::verify(&sig, message.as_bytes(), &public) {
        return Ok(());
    }
    let wrapped = format!("<Bytes>{message}</Bytes>");
    if sr25519::verify(&sig, wrapped.as_bytes(), &public) {
        return Ok(());
    }
    Err(SignatureError::Invalid)
}

/// Verifies `signature` by `ss58` over any of `messages` (each also in its `<Bytes>` wrapping).
///
/// The address and the signature are parsed once, up front, so a malformed one is named precisely
/// without spending a verification, and a well-formed forgery costs exactly `2 × messages.len()`.
pub fn verify_any(ss58: &str, messages: &[String], signature: &str) -> Result<(), SignatureError> {
    let public = sr25519::PublicKey(ss58_decode(ss58)?);
    let sig = parse_signature(signature)?;
    for message in messages {
        if sr25519::verify(&sig, message.as_bytes(), &public)
            || sr25519::verify(&sig, format!("<Bytes>{message}</Bytes>").as_bytes(), &public)
        {
            return Ok(());
        }
    }
    Err(SignatureError::Invalid)
}

/// An sr25519 hotkey that can sign (the miner's own, or a validator's in the probe and tests).
#[derive(Clone)]
pub struct Hotkey {
    pair: sr25519::Keypair,
    ss58: String,
}

impl std::fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hotkey({})", self.ss58)
    }
}

impl Hotkey {
    /// From the 32-byte mini-secret seed (a wallet file's `secretSeed`).
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, SignatureError> {
        let pair = sr25519::Keypair::from_secret_key(seed).map_err(|_| SignatureError::BadAddress)?;
        let ss58 = ss58_encode(&pair.public_key().0);
        Ok(Self { pair, ss58 })
    }

    /// A random key, for `--dev` runs and tests.
    pub fn ephemeral() -> Self {
        let seed: [u8; 32] = rand::random();
        Self::from_seed(seed).expect("any 32 bytes are a valid mini secret")
    }

    pub fn ss58(&self) -> &str {
        &self.ss58
    }

    /// The key pair, for signing extrinsics.
    pub fn keypair(&self) -> &sr25519::Keypair {
        &self.pair
    }

    /// The 32-byte public key (the chain's AccountId).
    pub fn account_id(&self) -> [u8; 32] {
        self.pair.public_key().0
    }

    /// `0x`-hex signature over `message`.
    pub fn sign_hex(&self, message: &[u8]) -> String {
        format!("0x{}", hex::encode(self.pair.sign(message).0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss58_is_substrates_alice_and_a_bad_checksum_or_length_is_refused() {
        let alice = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";
        let public = ss58_decode(alice).unwrap();
        assert_eq!(hex::encode(public), "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d");
        assert_eq!(ss58_encode(&public), alice);
        assert_eq!(ss58_decode(&format!(" {alice}\n")), Ok(public), "surrounding whitespace is not part of it");
        let mut damaged = alice.to_string();
        damaged.replace_range(47.., "Z");
        assert_eq!(ss58_decode(&damaged), Err(SignatureError::BadAddress));
        assert_eq!(ss58_decode(&alice[..40]), Err(SignatureError::BadAddress));
        assert_eq!(ss58_decode("not base58 0OIl"), Err(SignatureError::BadAddress));
    }

    #[test]
    fn signs_verifies_and_wraps() {
        let key = Hotkey::ephemeral();
        let sig = key.sign_hex(b"1.0.n.h");
        assert!(verify_sr25519(key.ss58(), "1.0.n.h", &sig).is_ok());
        assert_eq!(verify_sr25519(key.ss58(), "1.0.n.x", &sig), Err(SignatureError::Invalid));
        assert_eq!(
            verify_sr25519(key.ss58(), "1.0.n.h", sig.trim_start_matches("0x")),
            Err(SignatureError::BadSignatureFormat)
        );
        let wrapped = key.sign_hex(b"<Bytes>m</Bytes>");
        assert!(verify_sr25519(key.ss58(), "m", &wrapped).is_ok());
        assert_eq!(ss58_decode("5Nope"), Err(SignatureError::BadAddress));
        let mut broken = key.ss58().to_string();
        broken.pop();
        broken.push(if key.ss58().ends_with('a') { 'b' } else { 'a' });
        assert_eq!(ss58_decode(&broken), Err(SignatureError::BadAddress));
    }
}
