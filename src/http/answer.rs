//! Turning a decrypted challenge into a reply: validation, scheduling, and the reply JSON with the
//! timing echo. Shared by `/fiber/challenge` and the legacy `/inference`.

use std::time::Instant;

use loosh_actors::inference::request::{BackendError, GenerationRequest};
use loosh_actors::protocol::messages::{echo_timing, unix_time_f64, ChallengeReply, ChallengeRequest, Usage};
use loosh_actors::scheduler::ScheduleError;

use super::error::ApiError;
use super::state::AppState;

/// Parses the challenge JSON; anything malformed is a 422 (a 400 would make the validator
/// re-handshake for nothing).
pub fn parse_challenge(plaintext: &[u8]) -> Result<ChallengeRequest, ApiError> {
    serde_json::from_slice(plaintext).map_err(|e| ApiError::Unprocessable(format!("challenge is not valid JSON: {e}")))
}

/// Runs the challenge through the scheduler and builds the reply.
pub async fn answer(state: &AppState, req: ChallengeRequest, arrival: Instant) -> Result<ChallengeReply, ApiError> {
    let messages = req
        .conversation()
        .ok_or_else(|| ApiError::Unprocessable("challenge has neither `messages` nor `prompt`".into()))?;
    let s = &state.settings;
    let temperature = req.temperature.unwrap_or(s.default_temperature);
    let top_p = req.top_p.unwrap_or(s.default_top_p);
    if !temperature.is_finite() || temperature < 0.0 || !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
        return Err(ApiError::Unprocessable("temperature must be >= 0 and top_p in (0, 1]".into()));
    }
    let stop = req.stop_strings();
    let generation = GenerationRequest {
        messages,
        tools: req.tools.clone(),
        tool_choice: req.tool_choice.clone(),
        max_tokens: req.max_tokens.unwrap_or(s.default_max_tokens).max(1),
        temperature,
        top_p,
        stop,
        deadline: arrival + s.deadline,
    };
    let inference_start = unix_time_f64();
    let gen = state.graph.generate(generation).await.map_err(|e| match e {
        ScheduleError::Busy { retry_after_secs, .. } => ApiError::Busy { reason: e.to_string(), retry_after_secs },
        ScheduleError::NoWorker | ScheduleError::Closed => {
            ApiError::Unavailable { reason: e.to_string(), retry_after_secs: Some(5) }
        }
        ScheduleError::Backend(BackendError::PromptTooLong { .. })
        | ScheduleError::Backend(BackendError::Template(_)) => ApiError::Unprocessable(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    })?;
    let inference_end = unix_time_f64();

    let m = &state.graph.metrics;
    m.tokens_generated.inc_by(u64::from(gen.completion_tokens));
    m.prompt_tokens.inc_by(u64::from(gen.prompt_tokens));
    if gen.cut_by_deadline {
        m.deadline_cuts.inc();
    }
    if let Some(first) = gen.first_token_at {
        m.time_to_first_token.observe(first.saturating_duration_since(arrival).as_secs_f64());
    }

    Ok(ChallengeReply {
        response_text: gen.text,
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
