//! The framed protocol between a worker and its engine child process: one frame is a 4-byte
//! little-endian length and that many bytes of JSON, on the child's stdin (to the engine) and
//! stdout (from it). The child's stderr is its log, not part of the protocol.
//!
//! The engine's spec, its model info and its step counters travel as they are (serialisable);
//! instants do not cross a process boundary, so times travel as durations relative to the moment
//! the frame is written: a request's deadline as time left, a generation's instants as time ago.
//! A pipe between two processes on one machine adds microseconds to them, nothing more.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::inference::embedded::{EmbeddedSpec, ModelInfo, StepStats};
use crate::inference::request::{BackendError, FinishReason, Generation, GenerationRequest, JobControl};
use crate::protocol::messages::{ChatMessage, ToolCall};

/// No frame is larger: a challenge's messages fit in a few megabytes (the HTTP body cap is far
/// below this), so a larger length means a corrupt stream, not a big request.
pub const MAX_FRAME: usize = 64 << 20;

/// Writes one frame (not flushed: the caller flushes once per batch of frames).
pub fn write_frame<T: Serialize>(out: &mut impl Write, frame: &T) -> io::Result<()> {
    let body = serde_json::to_vec(frame).map_err(io::Error::other)?;
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(&body)
}

/// Reads one frame; `Ok(None)` at a clean end of stream (the other side closed its end).
pub fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    serde_json::from_slice(&body).map(Some).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// What a worker sends its engine child.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToEngine {
    /// The first frame: load this engine.
    Start(EmbeddedSpec),
    Job {
        id: u64,
        request: WireRequest,
    },
    /// The challenge behind this job no longer needs it (a hedge won elsewhere): stop it and free
    /// its sequence, as the engine does on a thread.
    Cancel {
        id: u64,
    },
    /// Test hook: the child calls `abort()` at its next step with work in flight, as llama.cpp
    /// does on a CUDA error.
    #[cfg(feature = "test-hooks")]
    AbortForTest,
    /// Test hook: the child stops making progress at its next step with work in flight.
    #[cfg(feature = "test-hooks")]
    StallForTest,
}

/// What an engine child sends its worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromEngine {
    /// Once, after loading (or failing to load) the model.
    Ready(Result<ModelInfo, BackendError>),
    /// After a step (at most every [`STATS_EVERY`] while busy, and whenever work finishes or the
    /// engine goes idle): the worker's view for the scheduler, `/metrics` and the watchdog.
    Stats {
        steps: StepStats,
        active: usize,
        busy: bool,
    },
    /// This job sampled its first token: hedging decides on it.
    FirstToken {
        id: u64,
    },
    Done {
        id: u64,
        result: Result<WireGeneration, BackendError>,
    },
}

/// How often a busy child reports its step counters: the watchdog's clock and the tokens/s gauge
/// need no finer grain, and a frame per step would cost a write per token.
pub const STATS_EVERY: Duration = Duration::from_millis(100);

/// [`GenerationRequest`] on the wire; the deadline as microseconds left.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub stop: Vec<String>,
    pub deadline_in_us: u64,
}

impl WireRequest {
    /// The request's control (cancel, first token) does not travel: the worker relays it as
    /// `Cancel` and `FirstToken` frames.
    pub fn new(r: GenerationRequest, now: Instant) -> Self {
        // Destructured so that a field added to the request is a compile error here, not dropped.
        let GenerationRequest {
            messages,
            tools,
            tool_choice,
            max_tokens,
            temperature,
            top_p,
            stop,
            deadline,
            control: _,
        } = r;
        WireRequest {
            messages,
            tools,
            tool_choice,
            max_tokens,
            temperature,
            top_p,
            stop,
            deadline_in_us: micros(deadline.saturating_duration_since(now)),
        }
    }

    pub fn into_request(self, now: Instant) -> GenerationRequest {
        GenerationRequest {
            messages: self.messages,
            tools: self.tools,
            tool_choice: self.tool_choice,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            stop: self.stop,
            deadline: now + Duration::from_micros(self.deadline_in_us),
            control: JobControl::default(),
        }
    }
}

/// [`Generation`] on the wire; its instants as microseconds ago.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireGeneration {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub first_token_ago_us: Option<u64>,
    pub started_ago_us: u64,
    pub finished_ago_us: u64,
    pub cut_by_deadline: bool,
}

impl WireGeneration {
    pub fn new(g: Generation, now: Instant) -> Self {
        let Generation {
            text,
            tool_calls,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            first_token_at,
            started_at,
            finished_at,
            cut_by_deadline,
            // Set by the scheduler, on the node's side.
            worker: _,
        } = g;
        let ago = |t: Instant| micros(now.saturating_duration_since(t));
        WireGeneration {
            text,
            tool_calls,
            finish_reason,
            prompt_tokens,
            completion_tokens,
            first_token_ago_us: first_token_at.map(ago),
            started_ago_us: ago(started_at),
            finished_ago_us: ago(finished_at),
            cut_by_deadline,
        }
    }

    pub fn into_generation(self, now: Instant) -> Generation {
        let at = |us: u64| now.checked_sub(Duration::from_micros(us)).unwrap_or(now);
        Generation {
            text: self.text,
            tool_calls: self.tool_calls,
            finish_reason: self.finish_reason,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            first_token_at: self.first_token_ago_us.map(at),
            started_at: at(self.started_ago_us),
            finished_at: at(self.finished_ago_us),
            cut_by_deadline: self.cut_by_deadline,
            worker: String::new(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_stream_ends_cleanly_between_frames() {
        let mut buf = Vec::new();
        let now = Instant::now();
        let request = GenerationRequest::one_turn("hello", 7, now + Duration::from_secs(3));
        write_frame(&mut buf, &ToEngine::Job { id: 42, request: WireRequest::new(request.clone(), now) }).unwrap();
        write_frame(&mut buf, &FromEngine::Ready(Err(BackendError::ModelLoad("no such file".into())))).unwrap();
        let mut input = buf.as_slice();
        let Some(ToEngine::Job { id, request: wire }) = read_frame(&mut input).unwrap() else { panic!("a job") };
        let back = wire.into_request(now);
        assert_eq!((id, back.messages, back.max_tokens, back.deadline), (42, request.messages, 7, request.deadline));
        let ready: Option<FromEngine> = read_frame(&mut input).unwrap();
        assert!(matches!(ready, Some(FromEngine::Ready(Err(BackendError::ModelLoad(m)))) if m == "no such file"));
        assert!(read_frame::<FromEngine>(&mut input).unwrap().is_none(), "EOF between frames is a clean end");
    }

    #[test]
    fn a_truncated_or_oversized_frame_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        write_frame(
            &mut buf,
            &ToEngine::Job {
                id: 1,
                request: WireRequest::new(GenerationRequest::one_turn("x", 1, Instant::now()), Instant::now()),
            },
        )
        .unwrap();
        let truncated = &buf[..buf.len() - 3];
        assert_eq!(read_frame::<ToEngine>(&mut &truncated[..]).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let huge = ((MAX_FRAME + 1) as u32).to_le_bytes();
        assert_eq!(read_frame::<ToEngine>(&mut &huge[..]).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let garbage = [3u8, 0, 0, 0, b'{', b'x', b'}'];
        assert_eq!(read_frame::<ToEngine>(&mut &garbage[..]).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_generations_instants_survive_the_trip_as_ages() {
        let now = Instant::now();
        let g = Generation {
            text: "hi".into(),
            tool_calls: vec![],
            finish_reason: FinishReason::Length,
            prompt_tokens: 3,
            completion_tokens: 2,
            first_token_at: Some(now - Duration::from_millis(5)),
            started_at: now - Duration::from_millis(9),
            finished_at: now,
            cut_by_deadline: true,
            worker: String::new(),
        };
        let back = WireGeneration::new(g.clone(), now).into_generation(now);
        assert_eq!(
            (back.first_token_at, back.started_at, back.finished_at),
            (g.first_token_at, g.started_at, g.finished_at)
        );
        assert_eq!((back.finish_reason, back.cut_by_deadline, back.text), (FinishReason::Length, true, g.text));
    }
}
