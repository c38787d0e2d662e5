//! The RSA pool: unwraps validators' Fernet keys on a bounded set of blocking threads, apart from
//! challenge work.
//!
//! An RSA-2048 private-key operation costs about a millisecond of CPU, a thousand times a Fernet
//! decrypt, and any peer can ask for one with a key exchange. So the operations run on their own
//! budget: at most `slots` at once, each on tokio's blocking pool so that no async thread is held.
//! When every slot is taken the exchange is refused at once (503 with a retry hint) rather than
//! queued behind a flood; challenges never wait on this pool, because their Fernet work is a plain
//! function call ([`crate::protocol::fernet_codec`]).

use std::sync::Arc;

use prometheus::IntCounter;
use tokio::sync::Semaphore;

use crate::protocol::rsa_keys::{MinerRsaKey, UnwrapError};

/// Why a wrapped key was not unwrapped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RsaPoolError {
    #[error(transparent)]
    Unwrap(#[from] UnwrapError),
    #[error("every RSA slot is busy")]
    Full,
}

/// Cheap to clone; one per node.
#[derive(Clone)]
pub struct RsaPool {
    key: Arc<MinerRsaKey>,
    slots: Arc<Semaphore>,
    /// `loosh_rsa_operations_total`.
    operations: IntCounter,
}

impl RsaPool {
    pub fn new(key: Arc<MinerRsaKey>, slots: usize, operations: IntCounter) -> Self {
        Self { key, slots: Arc::new(Semaphore::new(slots.max(1))), operations }
    }

    /// The miner's RSA public key, SPKI PEM.
    pub fn public_pem(&self) -> &str {
        self.key.public_pem()
    }

    /// Unwraps the hex ciphertext into the Fernet key text it carries, or refuses at once when
    /// every slot is taken.
    pub async fn unwrap_key(&self, ciphertext_hex: String) -> Result<String, RsaPoolError> {
        let permit = self.slots.clone().try_acquire_owned().map_err(|_| RsaPoolError::Full)?;
        self.operations.inc();
        let key = self.key.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            key.unwrap_fernet_key(&ciphertext_hex)
        })
        .await
        .unwrap_or(Err(UnwrapError::Decrypt));
        Ok(result?)
    }
}

/// RSA operations at once by default: two cores' worth, enough for every validator re-keying at
/// the same moment, small enough that a flood cannot take the CPU from inference.
pub const DEFAULT_RSA_SLOTS: usize = 2;
