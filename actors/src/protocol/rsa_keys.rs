//! The miner's RSA-2048 key: validators wrap their Fernet key with it.
//!
//! Like the Python miner, a fresh key is made at every start and never written to disk: a key that
//! never leaves the process cannot leak, and validators fetch the public half again on any 401.

use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};
use thiserror::Error;

/// Why a wrapped symmetric key could not be unwrapped.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UnwrapError {
    #[error("encrypted_symmetric_key is not hex")]
    NotHex,
    #[error("RSA-OAEP decryption failed")]
    Decrypt,
    #[error("the unwrapped key is not a Fernet key")]
    NotFernetKey,
}

/// Why a key could not be made or loaded.
#[derive(Debug, Error)]
pub enum RsaKeyError {
    #[error("RSA key generation failed: {0}")]
    Generate(String),
    #[error("invalid PEM: {0}")]
    Pem(String),
}

/// The miner's key pair and its public half as the validator expects to read it.
pub struct MinerRsaKey {
    private: RsaPrivateKey,
    public_pem: String,
}

impl MinerRsaKey {
    /// Makes a fresh RSA-2048 (e = 65537) key. Takes tens of milliseconds in release builds.
    pub fn generate() -> Result<Self, RsaKeyError> {
        let private =
            RsaPrivateKey::new(&mut rand::thread_rng(), 2048).map_err(|e| RsaKeyError::Generate(e.to_string()))?;
        Self::from_private(private)
    }

    /// Loads a PKCS#8 PEM private key (tests use the key the protocol vectors were recorded against).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, RsaKeyError> {
        let private = RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| RsaKeyError::Pem(e.to_string()))?;
        Self::from_private(private)
    }

    fn from_private(private: RsaPrivateKey) -> Result<Self, RsaKeyError> {
        let public_pem =
            private.to_public_key().to_public_key_pem(LineEnding::LF).map_err(|e| RsaKeyError::Pem(e.to_string()))?;
        Ok(Self { private, public_pem })
    }

    /// SubjectPublicKeyInfo PEM, 64-column lines, trailing newline.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    /// Unwraps the hex RSA-OAEP(SHA-256) ciphertext into the Fernet key text it carries.
    /// CPU-bound (~1 ms): call it from a blocking thread. Blinded, so that its timing says nothing
    /// about the private key to a peer that can send us chosen ciphertexts (anyone can).
    pub fn unwrap_fernet_key(&self, ciphertext_hex: &str) -> Result<String, UnwrapError> {
        let ciphertext = hex::decode(ciphertext_hex.trim()).map_err(|_| UnwrapError::NotHex)?;
        let plain = self
            .private
            .decrypt_blinded(&mut rand::thread_rng(), Oaep::new::<Sha256>(), &ciphertext)
            .map_err(|_| UnwrapError::Decrypt)?;
        let text = String::from_utf8(plain).map_err(|_| UnwrapError::NotFernetKey)?;
        crate::protocol::fernet_codec::FernetKey::from_key_text(&text).map_err(|_| UnwrapError::NotFernetKey)?;
        Ok(text)
    }
}

/// Wraps a Fernet key text for a miner, as the validator does (used by the probe and tests).
pub fn wrap_fernet_key(public_pem: &str, key_text: &str) -> Result<String, RsaKeyError> {
    let public = RsaPublicKey::from_public_key_pem(public_pem).map_err(|e| RsaKeyError::Pem(e.to_string()))?;
    let ct = public
        .encrypt(&mut rand::thread_rng(), Oaep::new::<Sha256>(), key_text.as_bytes())
        .map_err(|e| RsaKeyError::Generate(e.to_string()))?;
    Ok(hex::encode(ct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_and_unwraps() {
        let key = MinerRsaKey::generate().unwrap();
        assert!(key.public_pem().starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert!(key.public_pem().ends_with("-----END PUBLIC KEY-----\n"));
        let (text, _) = crate::protocol::fernet_codec::FernetKey::generate();
        let wrapped = wrap_fernet_key(key.public_pem(), &text).unwrap();
        assert_eq!(wrapped.len(), 512);
        assert_eq!(key.unwrap_fernet_key(&wrapped).unwrap(), text);
        assert_eq!(key.unwrap_fernet_key(&wrapped.to_uppercase()).unwrap(), text);
        assert_eq!(key.unwrap_fernet_key("zz"), Err(UnwrapError::NotHex));
        assert_eq!(key.unwrap_fernet_key(&"ab".repeat(256)), Err(UnwrapError::Decrypt));
        let not_fernet = wrap_fernet_key(key.public_pem(), "hello").unwrap();
        assert_eq!(key.unwrap_fernet_key(&not_fernet), Err(UnwrapError::NotFernetKey));
    }
}
