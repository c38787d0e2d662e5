//! Challenge crypto actors: Fernet both ways on the challenge channel, and the RSA unwrap of
//! key exchanges. A small pool of them, so that no single mailbox serialises every validator.
//!
//! Fernet on a challenge-sized token takes microseconds and runs inside the actor; the RSA-2048
//! private-key operation takes about a millisecond and runs on tokio's blocking pool so that it
//! never holds an async worker thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::protocol::fernet_codec::{FernetError, FernetKey};
use crate::protocol::rsa_keys::{MinerRsaKey, UnwrapError};

const CALL_TIMEOUT_MS: u64 = 10_000;

pub enum CryptoMsg {
    Decrypt { key: FernetKey, token: Vec<u8>, ttl_secs: u64, reply: RpcReplyPort<Result<Vec<u8>, FernetError>> },
    Encrypt { key: FernetKey, plaintext: Vec<u8>, reply: RpcReplyPort<String> },
    Unwrap { ciphertext_hex: String, reply: RpcReplyPort<Result<String, UnwrapError>> },
}

pub struct ChallengeCrypto;

impl Actor for ChallengeCrypto {
    type Msg = CryptoMsg;
    type State = Arc<MinerRsaKey>;
    type Arguments = Arc<MinerRsaKey>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        rsa: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(rsa)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        rsa: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CryptoMsg::Decrypt { key, token, ttl_secs, reply } => {
                let _ = reply.send(key.decrypt(&token, ttl_secs));
            }
            CryptoMsg::Encrypt { key, plaintext, reply } => {
                let _ = reply.send(key.encrypt(&plaintext));
            }
            CryptoMsg::Unwrap { ciphertext_hex, reply } => {
                let rsa = rsa.clone();
                let result = tokio::task::spawn_blocking(move || rsa.unwrap_fernet_key(&ciphertext_hex))
                    .await
                    .unwrap_or(Err(UnwrapError::Decrypt));
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

/// Why the pool could not do the work.
#[derive(Debug, thiserror::Error)]
pub enum CryptoPoolError {
    #[error(transparent)]
    Fernet(#[from] FernetError),
    #[error(transparent)]
    Unwrap(#[from] UnwrapError),
    #[error("crypto actor unavailable: {0}")]
    Unavailable(String),
}

/// Round-robin handle over the crypto actors (supervised by the graph's root).
#[derive(Clone)]
pub struct CryptoPool {
    actors: Arc<Vec<ActorRef<CryptoMsg>>>,
    next: Arc<AtomicUsize>,
    public_pem: Arc<str>,
}

impl CryptoPool {
    pub fn new(actors: Vec<ActorRef<CryptoMsg>>, public_pem: &str) -> Self {
        assert!(!actors.is_empty(), "a crypto pool needs at least one actor");
        Self { actors: Arc::new(actors), next: Arc::new(AtomicUsize::new(0)), public_pem: public_pem.into() }
    }

    fn pick(&self) -> &ActorRef<CryptoMsg> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.actors.len();
        &self.actors[i]
    }

    /// The miner's RSA public key, SPKI PEM.
    pub fn public_pem(&self) -> &str {
        &self.public_pem
    }

    pub async fn decrypt(&self, key: FernetKey, token: Vec<u8>, ttl_secs: u64) -> Result<Vec<u8>, CryptoPoolError> {
        ractor::call_t!(self.pick(), |reply| CryptoMsg::Decrypt { key, token, ttl_secs, reply }, CALL_TIMEOUT_MS)
            .map_err(|e| CryptoPoolError::Unavailable(e.to_string()))?
            .map_err(CryptoPoolError::from)
    }

    pub async fn encrypt(&self, key: FernetKey, plaintext: Vec<u8>) -> Result<String, CryptoPoolError> {
        ractor::call_t!(self.pick(), |reply| CryptoMsg::Encrypt { key, plaintext, reply }, CALL_TIMEOUT_MS)
            .map_err(|e| CryptoPoolError::Unavailable(e.to_string()))
    }

    pub async fn unwrap_key(&self, ciphertext_hex: String) -> Result<String, CryptoPoolError> {
        ractor::call_t!(self.pick(), |reply| CryptoMsg::Unwrap { ciphertext_hex, reply }, CALL_TIMEOUT_MS)
            .map_err(|e| CryptoPoolError::Unavailable(e.to_string()))?
            .map_err(CryptoPoolError::from)
    }
}

/// Spare the caller a magic number: how many crypto actors a node runs by default.
pub const DEFAULT_POOL_SIZE: usize = 4;
