//! A validator-side client of the Loosh protocol: what the probe, the benchmarks and the tests use
//! to talk to a miner (ours or the Python one) exactly as the validator does.

use std::time::{Duration, Instant};

use loosh_actors::protocol::fernet_codec::FernetKey;
use loosh_actors::protocol::messages::{unix_time_f64, ChallengeReply};
use loosh_actors::protocol::pyfloat::python_float_repr;
use loosh_actors::protocol::rsa_keys::wrap_fernet_key;
use loosh_actors::settings::Hotkey;
use serde_json::{json, Value};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("HTTP request to {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("{url} answered {status}: {body}")]
    Status { url: String, status: u16, body: String, retry_after: Option<u64> },
    #[error("unexpected reply from {url}: {message}")]
    Protocol { url: String, message: String },
}

/// One validator identity talking to one miner, holding the symmetric key of its last handshake.
/// A clone shares the identity and key, as a validator's concurrent challenges do.
#[derive(Clone)]
pub struct ValidatorClient {
    http: reqwest::Client,
    base: String,
    hotkey: Hotkey,
    public_pem: Option<String>,
    session: Option<(String, FernetKey)>,
}

/// Timings of one challenge round trip, client side.
#[derive(Debug, Clone)]
pub struct ChallengeTiming {
    pub encrypt: Duration,
    pub round_trip: Duration,
    pub decrypt: Duration,
    pub response_bytes: usize,
}

impl ValidatorClient {
    pub fn new(base_url: &str, hotkey: Hotkey) -> Self {
        Self::from_address(base_url, hotkey, None)
    }

    /// A client whose connections leave from `local` (a loopback alias such as 127.0.0.2 in the
    /// tests and `loosh-bench attack`: another host, as the miner sees it).
    pub fn from_address(base_url: &str, hotkey: Hotkey, local: Option<std::net::IpAddr>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .local_address(local)
            .no_proxy()
            .build()
            .expect("a plain HTTP client builds");
        Self { http, base: base_url.trim_end_matches('/').to_string(), hotkey, public_pem: None, session: None }
    }

    /// Sends a key-exchange body as it is (a replayed or relayed one, in attack tests); the status
    /// and the JSON answer. The client's own key is left as it was.
    pub async fn post_exchange(&self, body: String) -> Result<(u16, Value), ClientError> {
        let url = self.url("/fiber/key-exchange");
        let (status, _, resp) =
            Self::read(&url, self.http.post(&url).header("content-type", "application/json").body(body).send().await)
                .await?;
        Ok((status.as_u16(), serde_json::from_slice(&resp).unwrap_or(Value::Null)))
    }

    /// Uses `key` under `uuid` for the next challenges, as if a handshake had made it.
    pub fn use_key(&mut self, uuid: &str, key: FernetKey) {
        self.session = Some((uuid.to_string(), key));
    }

    pub fn hotkey(&self) -> &Hotkey {
        &self.hotkey
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn read(
        url: &str,
        res: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        let res = res.map_err(|e| ClientError::Http { url: url.into(), message: e.to_string() })?;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.bytes().await.map_err(|e| ClientError::Http { url: url.into(), message: e.to_string() })?;
        Ok((status, headers, body.to_vec()))
    }

    fn expect_json(url: &str, status: reqwest::StatusCode, body: &[u8]) -> Result<Value, ClientError> {
        if status != reqwest::StatusCode::OK {
            return Err(ClientError::Status {
                url: url.into(),
                status: status.as_u16(),
                body: String::from_utf8_lossy(body).into(),
                retry_after: None,
            });
        }
        serde_json::from_slice(body)
            .map_err(|e| ClientError::Protocol { url: url.into(), message: format!("not JSON: {e}") })
    }

    /// `GET /availability`: the JSON the miner returned.
    pub async fn availability(&self) -> Result<Value, ClientError> {
        let url = self.url("/availability");
        let (status, _, body) =
            Self::read(&url, self.http.get(&url).header("validator-hotkey", self.hotkey.ss58()).send().await).await?;
        Self::expect_json(&url, status, &body)
    }

    /// `GET /fiber/public-key`.
    pub async fn fetch_public_key(&mut self) -> Result<String, ClientError> {
        let url = self.url("/fiber/public-key");
        let (status, _, body) = Self::read(&url, self.http.get(&url).send().await).await?;
        let v = Self::expect_json(&url, status, &body)?;
        let pem = v["public_key"]
            .as_str()
            .ok_or_else(|| ClientError::Protocol { url: url.clone(), message: "no public_key".into() })?;
        self.public_pem = Some(pem.to_string());
        Ok(pem.to_string())
    }

    /// `POST /fiber/key-exchange` with a fresh Fernet key, as the validator does; fetches the public
    /// key first if it has none.
    pub async fn handshake(&mut self) -> Result<(), ClientError> {
        let pem = match &self.public_pem {
            Some(p) => p.clone(),
            None => self.fetch_public_key().await?,
        };
        let url = self.url("/fiber/key-exchange");
        let (key_text, key) = FernetKey::generate();
        let wrapped = wrap_fernet_key(&pem, &key_text)
            .map_err(|e| ClientError::Protocol { url: url.clone(), message: e.to_string() })?;
        let uuid = uuid::Uuid::new_v4().to_string();
        let nonce = uuid::Uuid::new_v4().to_string();
        let body = key_exchange_body(&self.hotkey, &wrapped, &uuid, &nonce, unix_time_f64());
        let (status, _, resp) =
            Self::read(&url, self.http.post(&url).header("content-type", "application/json").body(body).send().await)
                .await?;
        let v = Self::expect_json(&url, status, &resp)?;
        if v["success"] != json!(true) {
            return Err(ClientError::Protocol { url, message: format!("success is not true: {v}") });
        }
        self.session = Some((uuid, key));
        Ok(())
    }

    /// Sends one encrypted challenge and decrypts the reply. On a 401 that carries our public key
    /// it re-handshakes once and retries, as the validator does.
    pub async fn challenge(&mut self, challenge: &Value) -> Result<(ChallengeReply, ChallengeTiming), ClientError> {
        if self.session.is_none() {
            self.handshake().await?;
        }
        match self.challenge_once(challenge).await {
            Err(ClientError::Status { status: 401, body, .. }) => {
                if let Ok(v) = serde_json::from_str::<Value>(&body) {
                    if let Some(pem) = v["public_key"].as_str() {
                        self.public_pem = Some(pem.to_string());
                    }
                }
                self.handshake().await?;
                self.challenge_once(challenge).await
            }
            other => other,
        }
    }

    /// One challenge with the current key, no retry.
    pub async fn challenge_once(&self, challenge: &Value) -> Result<(ChallengeReply, ChallengeTiming), ClientError> {
        let url = self.url("/fiber/challenge");
        let (uuid, key) =
            self.session.clone().ok_or_else(|| ClientError::Protocol { url: url.clone(), message: "no key".into() })?;
        let t0 = Instant::now();
        let token = key.encrypt(challenge.to_string().as_bytes());
        let encrypt = t0.elapsed();
        let t1 = Instant::now();
        let res = self
            .http
            .post(&url)
            .header("x-fiber-validator-hotkey-ss58", self.hotkey.ss58())
            .header("x-fiber-symmetric-key-uuid", &uuid)
            .header("content-type", "application/octet-stream")
            .body(token)
            .send()
            .await;
        let (status, headers, body) = Self::read(&url, res).await?;
        let round_trip = t1.elapsed();
        if status != reqwest::StatusCode::OK {
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).into(),
                retry_after: headers
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            });
        }
        let ctype = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if ctype != "application/octet-stream" {
            return Err(ClientError::Protocol { url, message: format!("content-type is {ctype:?}") });
        }
        let t2 = Instant::now();
        let plain = key
            .decrypt(&body, 3600)
            .map_err(|e| ClientError::Protocol { url: url.clone(), message: format!("reply does not decrypt: {e}") })?;
        let reply: ChallengeReply = serde_json::from_slice(&plain)
            .map_err(|e| ClientError::Protocol { url: url.clone(), message: format!("reply JSON: {e}") })?;
        let decrypt = t2.elapsed();
        Ok((reply, ChallengeTiming { encrypt, round_trip, decrypt, response_bytes: body.len() }))
    }
}

/// The JSON body of a key exchange signed by `hotkey`, as the validator writes it. The signature
/// covers `timestamp.nonce.hotkey` and not the wrapped key, which is why the miner spends the nonce
/// before its RSA work.
pub fn key_exchange_body(hotkey: &Hotkey, wrapped_hex: &str, uuid: &str, nonce: &str, timestamp: f64) -> String {
    let ts = python_float_repr(timestamp);
    let signature = hotkey.sign_hex(format!("{ts}.{nonce}.{}", hotkey.ss58()).as_bytes());
    // Written by hand so that the timestamp's JSON text is exactly the text that was signed.
    format!(
        r#"{{"encrypted_symmetric_key": "{wrapped_hex}", "symmetric_key_uuid": "{uuid}", "timestamp": {ts}, "nonce": "{nonce}", "signature": "{signature}", "validator_hotkey_ss58": "{}"}}"#,
        hotkey.ss58()
    )
}

/// A challenge body as the validator builds it (every key present).
pub fn challenge_body(prompt: &str, max_tokens: u32, temperature: f32) -> Value {
    json!({
        "prompt": prompt,
        "messages": [{"role": "user", "content": prompt}],
        "tools": null,
        "tool_choice": null,
        "model": "Qwen/Qwen2.5-32B-Instruct",
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": 0.95,
        "correlation_id": uuid::Uuid::new_v4().to_string(),
        "created_at": loosh_actors::protocol::messages::iso_datetime(unix_time_f64()),
    })
}
