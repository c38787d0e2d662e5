//! `answer_challenge`: decrypt, generate, encrypt — within the deadline.
//!
//! Order of checks as the Python miner (and so as the validator expects): authorization (403), a
//! ready worker (503), a live key (401 with our public key), a valid token (401), then the challenge
//! itself (422 when malformed).
//!
//! Mailbox hops per challenge — counted as actor messages that await a reply on the request's path:
//! 1. the front door → the scheduler (`Submit`: admission and the pick, decided once there), and
//! 2. the scheduler → the chosen backend worker (`Generate`).
//!
//! Everything else is a read or a function call: the readiness check reads the scheduler's
//! published status (a `watch`), the key is read from [`crate::session::live_keys::LiveKeys`], and
//! Fernet both ways is a plain call (microseconds on a challenge-sized token).

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::limits::{self, LimitError};
use super::share::Share;
use super::FrontDoor;
use crate::inference::request::{BackendError, Generation, GenerationRequest, JobControl};
use crate::inference::tool_calls::describe_tool_calls;
use crate::inference::tool_choice::{ToolChoice, ToolChoiceError};
use crate::protocol::fernet_codec::{reply_timestamp, stamped_at, unix_now, FernetError};
use crate::protocol::messages::{echo_timing, unix_time_f64, ChallengeReply, ChallengeRequest, Usage};
use crate::scheduler::ScheduleError;

/// Why a challenge was not answered. Statuses follow PROTOCOL.md (mapped in `src/http/error.rs`):
/// 401 makes the validator re-handshake, so only key problems get one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("Validator hotkey not recognized.")]
    Forbidden,
    #[error("Symmetric key not found or expired. Re-handshake required.")]
    UnknownKey { public_key: String },
    #[error("Failed to decrypt challenge payload: {0}. Re-handshake required.")]
    BadToken(FernetError),
    /// The challenge decrypted but is not one we can answer (422, never 400).
    #[error("{0}")]
    Unprocessable(String),
    /// The challenge passed one of the caps of [`limits`] (413 for the prompt's size, else 422).
    #[error(transparent)]
    OverLimit(#[from] LimitError),
    /// A `tool_choice` that cannot be honoured: an unknown function, a call forced with no tools,
    /// a malformed value (422, as any malformed challenge).
    #[error(transparent)]
    ToolChoice(#[from] ToolChoiceError),
    /// The prompt cannot fit the worker's context, judged by its byte length before any
    /// tokenizing (413).
    #[error("{0}")]
    TooLarge(String),
    /// The backend behind the miner answered with something no honest server sends (502).
    #[error("{0}")]
    BadGateway(String),
    /// Over a rate limit: 429 with the hint.
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// Full: retry after the hint.
    #[error("{reason}")]
    Busy { reason: String, retry_after_secs: u64 },
    /// No worker, admission closed, or something internal timed out.
    #[error("{reason}")]
    Unavailable { reason: String, retry_after_secs: u64 },
    /// The challenge ran but produced no text to answer with: never an empty 200.
    #[error("{0}")]
    NoAnswer(#[from] NoAnswer),
    #[error("{0}")]
    Internal(String),
}

impl ChallengeError {
    /// The `loosh_challenges_total` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Forbidden => "unauthorized",
            Self::UnknownKey { .. } => "unknown_key",
            Self::BadToken(_) => "bad_token",
            Self::Unprocessable(_) | Self::OverLimit(_) | Self::ToolChoice(_) | Self::TooLarge(_) => "bad_request",
            Self::Busy { .. } => "busy",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable { .. } => "unavailable",
            Self::NoAnswer(_) => "no_answer",
            Self::BadGateway(_) | Self::Internal(_) => "error",
        }
    }
}

/// Why a challenge that ran has no text.
///
/// An empty `response_text` in a 200 is scored like any 200, at `(1 - t/Σt)·θ`: θ = 0 when it
/// fails the quality filter or is the lone survivor of it, and outside the consensus otherwise —
/// either way a sample, usually far below the moving average it joins. A
/// non-200 other than 400/401 makes the validator's client raise, log and return `None` for this
/// miner, and `None` is skipped: no sample, the average untouched (400/401 would make it drop its
/// key, re-handshake and send the challenge again, to be late again). So no text is an error
/// status, mapped in `src/http/error.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoAnswer {
    /// No token by the deadline (a backend that sent nothing in time, a job that only got a
    /// sequence at its deadline).
    #[error("no token was generated before the challenge deadline")]
    NoToken,
    /// The model ended its answer without any text or tool call.
    #[error("the model produced an empty answer")]
    Empty,
    /// The model answered only with tool calls, and `TOOL_CALL_TEXT` is off: the validator reads
    /// only the text, so a 200 would be scored as an empty answer.
    #[error("the model answered only with tool calls, and the validator reads only text (TOOL_CALL_TEXT=true states them in words)")]
    ToolCallsOnly,
}

impl NoAnswer {
    /// The `loosh_no_answer_total` label.
    pub fn label(self) -> &'static str {
        match self {
            NoAnswer::NoToken => "no_token",
            NoAnswer::Empty => "empty",
            NoAnswer::ToolCallsOnly => "tool_calls_only",
        }
    }
}

/// The text to answer with: the model's, else a statement of its tool calls (when `tool_call_text`),
/// else why there is none.
pub fn answer_text(gen: &Generation, tool_call_text: bool) -> Result<String, NoAnswer> {
    if !gen.text.trim().is_empty() {
        return Ok(gen.text.clone());
    }
    if tool_call_text && !gen.tool_calls.is_empty() {
        return Ok(describe_tool_calls(&gen.tool_calls));
    }
    Err(if !gen.tool_calls.is_empty() {
        NoAnswer::ToolCallsOnly
    } else if gen.first_token_at.is_none() {
        NoAnswer::NoToken
    } else {
        NoAnswer::Empty
    })
}

/// Time kept back from a challenge's deadline for carrying its answer out: the hop back from the
/// engine, the reply JSON, Fernet and the HTTP write. An engine stops one step before the
/// deadline it is given, and a step of a small model is a millisecond: without this margin the
/// answer is ready at the deadline and leaves just after it. A twentieth of the deadline, at most
/// half a second.
pub fn reply_margin(deadline: Duration) -> Duration {
    (deadline / 20).min(Duration::from_millis(500))
}

/// One validator's slot in the per-validator in-flight count, released on drop (whatever path the
/// challenge leaves by).
struct ValidatorSlot<'a> {
    counts: &'a DashMap<String, usize>,
    /// The share's bucket, then its pool's when it has one.
    buckets: Vec<String>,
}

impl Drop for ValidatorSlot<'_> {
    fn drop(&mut self) {
        for bucket in &self.buckets {
            release(self.counts, bucket);
        }
    }
}

fn release(counts: &DashMap<String, usize>, bucket: &str) {
    if let Some(mut n) = counts.get_mut(bucket) {
        *n = n.saturating_sub(1);
    }
    counts.remove_if(bucket, |_, n| *n == 0);
}

/// Takes one of `bucket`'s `cap` slots; false when all are taken. One entry at a time: a DashMap
/// entry locks its shard, so two held at once could deadlock on a shared shard.
fn take(counts: &DashMap<String, usize>, bucket: &str, cap: usize) -> bool {
    let mut n = counts.entry(bucket.to_string()).or_insert(0);
    if *n >= cap {
        return false;
    }
    *n += 1;
    true
}

impl FrontDoor {
    /// The checks that need no body: authorization, then a ready worker. Routes call it before
    /// reading the body so that a refused caller costs no upload; `answer_challenge` repeats it.
    pub fn check_caller(&self, hotkey: &str) -> Result<(), ChallengeError> {
        if !self.auth.is_allowed(hotkey) {
            return Err(ChallengeError::Forbidden);
        }
        let status = self.graph.status_now();
        if !status.admission_open || status.ready_workers == 0 {
            let reason = status.availability().err().unwrap_or("no backend worker is ready");
            return Err(ChallengeError::Unavailable { reason: reason.into(), retry_after_secs: 5 });
        }
        Ok(())
    }

    /// Answers one encrypted challenge: returns the Fernet token of the reply JSON. Records the
    /// outcome and latency in the metrics.
    ///
    /// Two mailbox hops, counted as actor messages awaited on the challenge's path: the scheduler
    /// (`Submit`, where admission is decided once) and the worker it picks (`Generate`). The
    /// readiness check, the key lookup and Fernet both ways are reads and function calls.
    pub async fn answer_challenge(
        &self,
        hotkey: &str,
        uuid: &str,
        token: &[u8],
        arrival: Instant,
    ) -> Result<Vec<u8>, ChallengeError> {
        let result = self.answer_challenge_inner(hotkey, uuid, token, arrival).await;
        let outcome = result.as_ref().map_or_else(ChallengeError::outcome, |_| "ok");
        self.metrics().challenges.with_label_values(&[outcome]).inc();
        self.metrics().challenge_latency.observe(arrival.elapsed().as_secs_f64());
        result
    }

    async fn answer_challenge_inner(
        &self,
        hotkey: &str,
        uuid: &str,
        token: &[u8],
        arrival: Instant,
    ) -> Result<Vec<u8>, ChallengeError> {
        self.check_caller(hotkey)?;
        let entry = self
            .keys()
            .lookup(hotkey, uuid)
            .ok_or_else(|| ChallengeError::UnknownKey { public_key: self.rsa.public_pem().to_string() })?;
        let key = entry.key;
        let plaintext = key.decrypt(token, self.door.fernet_ttl_secs).map_err(ChallengeError::BadToken)?;
        // The token decrypted: the caller holds the key, so it is now a verified identity and
        // spends the share of the address that key was exchanged from — never before, so that
        // junk sent under a validator's name costs that validator nothing.
        let share = self.share_of(hotkey, entry.origin);
        self.check_hotkey_rate(&share.bucket)
            .map_err(|retry_after_secs| ChallengeError::RateLimited { retry_after_secs })?;
        let request = parse_challenge(&plaintext)?;
        let _slot = self.take_validator_slot(&share)?;
        // The share's bucket, not the bare hotkey, is what is kept supplied with samples: a
        // relayer answered on its own address must not make the validator look served.
        let reply = self.answer_request(request, arrival, Some(&share.bucket)).await?;
        let json =
            serde_json::to_vec(&reply).map_err(|e| ChallengeError::Internal(format!("reply serialisation: {e}")))?;
        // Stamped on the validator's clock as best we know it, so that a clock of ours running
        // ahead cannot make the validator refuse the reply as from the future.
        let stamp = match stamped_at(token) {
            Ok(challenge_stamp) => reply_timestamp(challenge_stamp, arrival.elapsed(), unix_now()),
            Err(_) => unix_now(),
        };
        Ok(key.encrypt_at(&json, stamp).into_bytes())
    }

    /// Answers a plain-JSON challenge (the legacy `/inference`): no key, no Fernet.
    pub async fn answer_plain(&self, body: &[u8], arrival: Instant) -> Result<ChallengeReply, ChallengeError> {
        let request = parse_challenge(body)?;
        self.answer_request(request, arrival, None).await
    }

    /// [`Self::answer_plain`] for a caller claiming `hotkey` from `ip`: it spends the in-flight
    /// share of that (hotkey, address), as a key from there would.
    pub async fn answer_plain_as(
        &self,
        hotkey: &str,
        ip: Option<std::net::IpAddr>,
        body: &[u8],
        arrival: Instant,
    ) -> Result<ChallengeReply, ChallengeError> {
        let request = parse_challenge(body)?;
        let _slot = self.take_validator_slot(&self.share_of(hotkey, ip))?;
        self.answer_request(request, arrival, None).await
    }

    /// A slot of the validator's in-flight share for this key's address ([`Share`]).
    fn take_validator_slot(&self, share: &Share) -> Result<ValidatorSlot<'_>, ChallengeError> {
        let counts = &*self.validator_in_flight;
        let busy = |reason: String| ChallengeError::Busy { reason, retry_after_secs: 1 };
        let mut slot = ValidatorSlot { counts, buckets: Vec::with_capacity(2) };
        if let Some((pool, cap)) = &share.pool {
            if !take(counts, pool, *cap) {
                return Err(busy(format!(
                    "this validator's keys from its newer addresses, none of them reported, already have {cap} challenges in flight"
                )));
            }
            slot.buckets.push(pool.clone());
        }
        let cap = share.cap;
        if !take(counts, &share.bucket, cap) {
            // `slot` drops here and gives the pool's slot back.
            return Err(busy(if share.elsewhere {
                format!("this validator's keys from unreported addresses already have {cap} challenges in flight")
            } else if share.pool.is_some() {
                format!("this address's part of the validator's share, {cap} challenges, is in flight")
            } else {
                format!("this validator already has {cap} challenges in flight")
            }));
        }
        slot.buckets.push(share.bucket.clone());
        Ok(slot)
    }

    /// Runs the challenge through the scheduler and builds the reply with the timing echo.
    /// `validator`: who is owed samples for this challenge (a share's bucket), when it is known.
    async fn answer_request(
        &self,
        req: ChallengeRequest,
        arrival: Instant,
        validator: Option<&str>,
    ) -> Result<ChallengeReply, ChallengeError> {
        self.metrics().count_model_hint(req.model.as_deref());
        limits::check(&req)?;
        // Read here for every backend, so that a `tool_choice` no server could honour is refused
        // before any work; the embedded engine reads it again to honour it.
        ToolChoice::parse(req.tool_choice.as_ref(), req.tools.as_deref())?;
        let messages = req
            .conversation()
            .ok_or_else(|| ChallengeError::Unprocessable("challenge has neither `messages` nor `prompt`".into()))?;
        let s = &self.door;
        let temperature = req.temperature.unwrap_or(s.default_temperature);
        let top_p = req.top_p.unwrap_or(s.default_top_p);
        if !temperature.is_finite() || temperature < 0.0 || !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
            return Err(ChallengeError::Unprocessable("temperature must be >= 0 and top_p in (0, 1]".into()));
        }
        let generation = GenerationRequest {
            messages,
            tools: req.tools.clone(),
            tool_choice: req.tool_choice.clone(),
            max_tokens: req.max_tokens.unwrap_or(s.default_max_tokens).max(1),
            temperature,
            top_p,
            stop: req.stop_strings(),
            deadline: arrival + s.deadline.saturating_sub(reply_margin(s.deadline)),
            control: JobControl::default(),
        };
        let inference_start = unix_time_f64();
        let gen = self.graph.generate_for(validator, generation).await.map_err(|e| match e {
            ScheduleError::Busy { retry_after_secs, .. }
            | ScheduleError::TooLate { retry_after_secs }
            | ScheduleError::WaitTooLong { retry_after_secs, .. } => {
                ChallengeError::Busy { reason: e.to_string(), retry_after_secs }
            }
            ScheduleError::NoWorker | ScheduleError::Closed => {
                ChallengeError::Unavailable { reason: e.to_string(), retry_after_secs: 5 }
            }
            ScheduleError::Backend(
                BackendError::PromptTooLong { .. } | BackendError::Template(_) | BackendError::ToolChoice(_),
            ) => ChallengeError::Unprocessable(e.to_string()),
            ScheduleError::Backend(BackendError::PromptTooLarge { .. }) => ChallengeError::TooLarge(e.to_string()),
            ScheduleError::Backend(BackendError::Misbehaved(_)) => ChallengeError::BadGateway(e.to_string()),
            other => ChallengeError::Internal(other.to_string()),
        })?;
        let inference_end = unix_time_f64();

        let m = &self.metrics();
        m.tokens_generated.inc_by(u64::from(gen.completion_tokens));
        m.prompt_tokens.inc_by(u64::from(gen.prompt_tokens));
        if gen.cut_by_deadline {
            m.deadline_cuts.inc();
        }
        if let Some(first) = gen.first_token_at {
            m.time_to_first_token.observe(first.saturating_duration_since(arrival).as_secs_f64());
        }
        let response_text = answer_text(&gen, s.tool_call_text).inspect_err(|why| {
            m.no_answer.with_label_values(&[why.label()]).inc();
        })?;
        // The route's span names the validator; this line adds what an operator asks next.
        tracing::info!(
            worker = %gen.worker,
            prompt_tokens = gen.prompt_tokens,
            tokens = gen.completion_tokens,
            finish = gen.finish_reason.as_str(),
            ms = arrival.elapsed().as_millis() as u64,
            "challenge answered"
        );

        Ok(ChallengeReply {
            response_text,
            response_time_ms: arrival.elapsed().as_millis() as u64,
            tool_calls: if gen.tool_calls.is_empty() { None } else { Some(gen.tool_calls) },
            finish_reason: gen.finish_reason.as_str().to_string(),
            usage: Usage {
                prompt_tokens: gen.prompt_tokens,
                completion_tokens: gen.completion_tokens,
                total_tokens: gen.prompt_tokens + gen.completion_tokens,
            },
            correlation_id: req.correlation_id.clone(),
            metadata: echo_timing(req.metadata.as_ref(), inference_start, inference_end, unix_time_f64()),
        })
    }
}

/// Parses the challenge JSON; anything malformed is a 422 (a 400 would make the validator
/// re-handshake for nothing).
fn parse_challenge(plaintext: &[u8]) -> Result<ChallengeRequest, ChallengeError> {
    serde_json::from_slice(plaintext)
        .map_err(|e| ChallengeError::Unprocessable(format!("challenge is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference::request::FinishReason;
    use crate::inference::tool_calls::extract_tool_calls;

    fn generation(text: &str, first_token: bool) -> Generation {
        let now = Instant::now();
        let (text, tool_calls) = extract_tool_calls(text);
        Generation {
            text,
            tool_calls,
            finish_reason: FinishReason::Stop,
            prompt_tokens: 5,
            completion_tokens: u32::from(first_token),
            first_token_at: first_token.then_some(now),
            started_at: now,
            finished_at: now,
            cut_by_deadline: false,
            worker: String::new(),
        }
    }

    #[test]
    fn no_text_is_never_an_answer() {
        assert_eq!(answer_text(&generation("", false), true), Err(NoAnswer::NoToken));
        assert_eq!(answer_text(&generation("  \n", true), true), Err(NoAnswer::Empty));
        assert_eq!(answer_text(&generation("Paris.", true), true).as_deref(), Ok("Paris."));
    }

    #[test]
    fn an_answer_that_is_only_tool_calls_states_them_unless_turned_off() {
        let only_calls = generation(
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>",
            true,
        );
        let text = answer_text(&only_calls, true).expect("stated");
        assert!(text.contains("get_weather") && text.contains("Paris"), "{text}");
        assert_eq!(only_calls.tool_calls.len(), 1, "the tool calls stay as they are");
        assert_eq!(answer_text(&only_calls, false), Err(NoAnswer::ToolCallsOnly));
    }

    #[test]
    fn the_reply_margin_is_a_twentieth_of_the_deadline_at_most_half_a_second() {
        assert_eq!(reply_margin(Duration::from_secs(4)), Duration::from_millis(200));
        assert_eq!(reply_margin(Duration::from_secs(50)), Duration::from_millis(500));
    }
}
