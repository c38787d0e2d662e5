//! Time-aware admission: live estimates of each worker's pace, and when a new challenge could
//! start and have a useful answer on it.
//!
//! Counting slots is not enough: a worker with every sequence busy and more challenges waiting
//! would start the next one only when one of those ends, often at its deadline, and the waiting
//! challenge comes back at ~50 s truncated or empty. A late answer is still scored, at
//! `(1 - t/Σt)·θ` (SCORING.md): with t near the round's 60 s cut that is usually well below the
//! miner's moving average, which it pulls down, where a refusal adds no sample at all. So the scheduler keeps, per worker, the expected end of each
//! job it holds and an EWMA of the time to first token and of tokens/s, both measured on real
//! challenges; a challenge that no worker can start in time to produce
//! [`AdmissionSettings::min_useful_tokens`] before its deadline is refused at once. Before a
//! worker has been measured, it is trusted: nothing is refused on a guess.
//!
//! Reaching 48 tokens in time is not the same as a good sample. Every second a challenge waits
//! for a sequence is a second added to its `t`, and every sequence started beside running ones
//! slows them all (a batch of k+1 decodes each sequence slower than a batch of k), adding to
//! *their* `t`. Both lower samples that a refusal would have left out of the average. So, once a
//! worker is measured, a challenge is also refused when it would wait more than
//! [`AdmissionSettings::max_wait`] for a sequence, or when starting it would add more than that
//! to the time of any challenge already running (see [`imposed_delay`]). The default wait
//! (`ADMISSION_MAX_WAIT_MS`, 2000) is argued in [`DEFAULT_MAX_WAIT`].
//!
//! A validator that never gets a sample gives weight 0 (24 h without one, SCORING.md). So the
//! wait cap is waived for a validator that has had no answer from this miner in
//! [`AdmissionSettings::keep_sample_every`]: its next challenge is taken whenever a worker can
//! still answer it usefully before its deadline.

use std::time::{Duration, Instant};

use crate::inference::request::Generation;

/// Weight of a new sample in the moving averages: recent enough to follow a worker slowing down
/// (thermal throttling, a neighbour on the GPU), smooth enough that one odd challenge does not
/// flip admission.
const ALPHA: f64 = 0.3;

#[derive(Debug, Clone)]
pub struct AdmissionSettings {
    /// `TIME_AWARE_ADMISSION`: refuse a challenge that cannot be answered usefully in time.
    pub enabled: bool,
    /// `ADMISSION_MIN_TOKENS`: the tokens a useful answer needs before the deadline (capped by the
    /// challenge's own `max_tokens`). The validator embeds the first 256 tokens of an answer and
    /// drops one whose relevance to the prompt is under 0.20: a few dozen tokens is the least
    /// that can say something on topic.
    pub min_useful_tokens: u32,
    /// `ADMISSION_MAX_WAIT_MS` (`0`: no cap): the longest a challenge may be expected to wait for a
    /// sequence, and the most that starting it may add to a running challenge's time.
    pub max_wait: Option<Duration>,
    /// `ADMISSION_KEEP_SAMPLE_MINUTES`: a validator with no answer from us for this long has its
    /// next challenge taken past the wait cap (when a worker can still answer it in time).
    pub keep_sample_every: Duration,
}

/// The default wait cap, from the scoring rule: a sample is `(1 - t/Σt)·θ = θ·S/(t+S)` with `S`
/// the other responders' times summed (up to 6 peers), and it enters a 24 h average where a
/// refusal adds nothing. With peers at ~20 s each (`S` ≈ 120 s) and our answer at 20 s, a wait of
/// 2 s lowers the sample by ~1.4 % — inside the round-to-round spread of `θ` — where 10 s lowers
/// it by ~7 %, a sample that pulls the average down. So the cap sits where the loss is still
/// noise, and a longer expected wait is a refusal.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(2000);

/// How often a validator is kept supplied with at least one sample, by default: well inside the
/// 24 h after which a validator with no sample of ours gives weight 0, so that a few busy hours
/// never come near it.
pub const DEFAULT_KEEP_SAMPLE_EVERY: Duration = Duration::from_secs(4 * 3600);

impl Default for AdmissionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_useful_tokens: 48,
            max_wait: Some(DEFAULT_MAX_WAIT),
            keep_sample_every: DEFAULT_KEEP_SAMPLE_EVERY,
        }
    }
}

/// Batch sizes whose decode pace is tracked apart (larger batches share the last entry).
pub const TRACKED_BATCH: usize = 16;

/// What one finished attempt tells about its worker's pace.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PaceSample {
    /// Dispatch to first token, when the attempt got a free sequence at once (a time that
    /// includes a wait in the queue says nothing about the worker's prefill).
    pub ttft: Option<Duration>,
    /// Tokens after the first, and the time they took.
    pub decode: Option<(u32, Duration)>,
    /// Sequences the worker ran, this one included, when it started (see [`Pace::batch_slowdown`]).
    pub batch: usize,
}

impl PaceSample {
    pub fn of(gen: &Generation, dispatched: Instant, started_free: bool) -> Self {
        let ttft = gen.first_token_at.filter(|_| started_free).map(|t| t.saturating_duration_since(dispatched));
        let decode = gen
            .first_token_at
            .filter(|_| gen.completion_tokens >= 2)
            .map(|t| (gen.completion_tokens - 1, gen.finished_at.saturating_duration_since(t)))
            .filter(|(_, d)| !d.is_zero());
        Self { ttft, decode, batch: 1 }
    }

    /// The same sample, taken with `batch` sequences running.
    pub fn in_batch(self, batch: usize) -> Self {
        Self { batch: batch.max(1), ..self }
    }
}

/// One worker's measured pace.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pace {
    ttft_secs: Option<f64>,
    tokens_per_sec: Option<f64>,
    /// Tokens/s of one sequence, by the number of sequences decoding beside it (index: batch - 1).
    by_batch: [Option<f64>; TRACKED_BATCH],
}

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    old.map_or(sample, |o| (1.0 - ALPHA) * o + ALPHA * sample)
}

impl Pace {
    pub fn record(&mut self, s: PaceSample) {
        if let Some(t) = s.ttft {
            self.ttft_secs = Some(ewma(self.ttft_secs, t.as_secs_f64()));
        }
        if let Some((tokens, took)) = s.decode {
            let rate = f64::from(tokens) / took.as_secs_f64();
            self.tokens_per_sec = Some(ewma(self.tokens_per_sec, rate));
            let slot = &mut self.by_batch[s.batch.clamp(1, TRACKED_BATCH) - 1];
            *slot = Some(ewma(*slot, rate));
        }
    }

    /// How much slower each of `running` sequences decodes once one more joins them: the ratio
    /// of the measured per-sequence rates at `running` and `running + 1`. 1 (no slowdown) until
    /// both are measured: nothing is refused on a guess, and admitting is how the larger batch
    /// gets measured.
    pub fn batch_slowdown(&self, running: usize) -> f64 {
        if running == 0 {
            return 1.0;
        }
        let at = |batch: usize| self.by_batch[batch.clamp(1, TRACKED_BATCH) - 1];
        match (at(running), at(running + 1)) {
            (Some(now), Some(after)) if after > 0.0 && running < TRACKED_BATCH => (now / after).max(1.0),
            _ => 1.0,
        }
    }

    /// Both the time to first token and tokens/s have been measured.
    pub fn is_measured(&self) -> bool {
        self.ttft_secs.is_some() && self.tokens_per_sec.is_some()
    }

    pub fn ttft_secs(&self) -> Option<f64> {
        self.ttft_secs
    }

    pub fn tokens_per_sec(&self) -> Option<f64> {
        self.tokens_per_sec
    }

    /// How long after it starts a generation has `tokens` tokens; `None` before measurements.
    pub fn time_to(&self, tokens: u32) -> Option<Duration> {
        let (ttft, tps) = (self.ttft_secs?, self.tokens_per_sec?);
        let secs = ttft + f64::from(tokens.saturating_sub(1)) / tps.max(1e-3);
        Duration::try_from_secs_f64(secs).ok()
    }
}

/// A job a worker holds (running or waiting), as admission plans with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPlan {
    /// When the scheduler handed it to the worker.
    pub placed: Instant,
    pub max_tokens: u32,
    pub deadline: Instant,
}

/// When a new challenge would get a sequence on a worker with `parallel` sequences holding `jobs`
/// (in the order they were placed): the worker's sequences are replayed at its *current* pace, each
/// job starting when it was placed or when a sequence frees, whichever is later, and ending after
/// `max_tokens` or at its deadline (see [`expected_end`]). Replayed on every decision rather than
/// fixed at placement, so that jobs placed before the worker was measured (planned to run to their
/// deadlines) do not make it look busy for a minute once it is. Overdue jobs free their sequence
/// now.
pub fn expected_start<'a>(
    now: Instant,
    jobs: impl Iterator<Item = &'a JobPlan>,
    parallel: usize,
    pace: &Pace,
) -> Instant {
    use std::cmp::Reverse;
    let parallel = parallel.max(1);
    let mut free_at = replay(now, jobs, parallel, pace, |_, _, _| {});
    if free_at.len() < parallel {
        return now;
    }
    free_at.pop().map_or(now, |Reverse(t)| t.max(now))
}

/// What a new challenge started now on this worker would add to the time of the challenges
/// already running there: each running job's remaining time, stretched by the
/// [`Pace::batch_slowdown`] of one more sequence, up to its deadline; the largest such delay.
/// A job that runs to its deadline anyway (the validator's 12,288-token challenges) is cut there
/// whatever the pace: slowing it costs tokens past what the validator reads, not time, so it
/// counts for nothing. Zero when the new challenge would not start now (it takes a sequence that
/// frees; the batch does not grow).
pub fn imposed_delay<'a>(
    now: Instant,
    jobs: impl Iterator<Item = &'a JobPlan>,
    parallel: usize,
    pace: &Pace,
) -> Duration {
    let ends = running_ends(now, jobs, parallel, pace);
    if ends.len() >= parallel.max(1) {
        return Duration::ZERO;
    }
    let stretch = pace.batch_slowdown(ends.len()) - 1.0;
    ends.iter()
        .map(|(end, deadline)| {
            let stretched = end.checked_add(end.saturating_duration_since(now).mul_f64(stretch)).unwrap_or(*deadline);
            stretched.min(*deadline).saturating_duration_since(*end)
        })
        .max()
        .unwrap_or(Duration::ZERO)
}

/// The expected end and the deadline of every job running at `now` (replayed as in
/// [`expected_start`]).
fn running_ends<'a>(
    now: Instant,
    jobs: impl Iterator<Item = &'a JobPlan>,
    parallel: usize,
    pace: &Pace,
) -> Vec<(Instant, Instant)> {
    let mut running = Vec::new();
    replay(now, jobs, parallel.max(1), pace, |start, end, job| {
        if start <= now && end > now {
            running.push((end, job.deadline));
        }
    });
    running
}

/// Replays `jobs` (in placement order) on `parallel` sequences at the worker's current pace: each
/// starts when it was placed or when a sequence frees, whichever is later, and ends as
/// [`expected_end`] says (overdue jobs free their sequence now). `each` sees every job's start
/// and end; the result is when each sequence frees, earliest first (fewer entries than
/// `parallel`: a sequence is free).
fn replay<'a>(
    now: Instant,
    jobs: impl Iterator<Item = &'a JobPlan>,
    parallel: usize,
    pace: &Pace,
    mut each: impl FnMut(Instant, Instant, &JobPlan),
) -> std::collections::BinaryHeap<std::cmp::Reverse<Instant>> {
    use std::cmp::Reverse;
    let mut free_at = std::collections::BinaryHeap::with_capacity(parallel + 1);
    for job in jobs {
        let start = if free_at.len() < parallel {
            job.placed
        } else {
            let Reverse(freed) = free_at.pop().expect("parallel >= 1 entries");
            job.placed.max(freed)
        };
        let end = expected_end(start, pace, job.max_tokens, job.deadline).max(now);
        each(start, end, job);
        free_at.push(Reverse(end));
    }
    free_at
}

/// When a job started at `start` is expected to end: after `max_tokens` at the worker's pace, or
/// at its deadline, whichever comes first; at its deadline before any measurement.
pub fn expected_end(start: Instant, pace: &Pace, max_tokens: u32, deadline: Instant) -> Instant {
    pace.time_to(max_tokens).and_then(|d| start.checked_add(d)).map_or(deadline, |end| end.min(deadline))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(ttft_ms: u64, tps: f64) -> Pace {
        let mut p = Pace::default();
        p.record(PaceSample {
            ttft: Some(Duration::from_millis(ttft_ms)),
            decode: Some((tps as u32, Duration::from_secs(1))),
            batch: 1,
        });
        p
    }

    #[test]
    fn a_new_sequence_stretches_the_running_ones_by_the_measured_batch_slowdown() {
        let now = Instant::now();
        // One sequence alone: 10 tokens/s; two side by side: 8 tokens/s each.
        let mut pace = measured(0, 10.0);
        let decode = |rate: u32| Some((rate, Duration::from_secs(1)));
        assert_eq!(pace.batch_slowdown(1), 1.0, "the pair is not measured yet: no slowdown assumed");
        pace.record(PaceSample { ttft: None, decode: decode(8), batch: 2 });
        assert!((pace.batch_slowdown(1) - 1.25).abs() < 1e-9);
        // A job with 10 s left at 10 tokens/s (101 tokens) is stretched by a quarter: 2.5 s.
        let pace = Pace { tokens_per_sec: Some(10.0), ..pace };
        let job = JobPlan { placed: now, max_tokens: 101, deadline: now + Duration::from_secs(50) };
        let delay = imposed_delay(now, [job].iter(), 2, &pace);
        assert!((delay.as_secs_f64() - 2.5).abs() < 1e-6, "{delay:?}");
        // A job cut at its deadline anyway loses tokens, not time: no delay counted.
        let long = JobPlan { max_tokens: 12_288, deadline: now + Duration::from_secs(5), ..job };
        assert_eq!(imposed_delay(now, [long].iter(), 2, &pace), Duration::ZERO);
        let near = JobPlan { deadline: now + Duration::from_secs(11), ..job };
        let delay = imposed_delay(now, [near].iter(), 2, &pace);
        assert!((delay.as_secs_f64() - 1.0).abs() < 1e-6, "stretched up to its deadline only: {delay:?}");
        // A full worker: the new job waits for a sequence and slows no one.
        assert_eq!(imposed_delay(now, [job, job].iter(), 2, &pace), Duration::ZERO);
        // Nothing running: nothing to slow.
        assert_eq!(imposed_delay(now, [].iter(), 2, &pace), Duration::ZERO);
    }

    #[test]
    fn a_worker_is_trusted_until_both_figures_are_measured() {
        let mut p = Pace::default();
        assert_eq!(p.time_to(10), None);
        p.record(PaceSample { ttft: Some(Duration::from_millis(200)), decode: None, batch: 1 });
        assert!(!p.is_measured(), "tokens/s still unknown");
        p.record(PaceSample { ttft: None, decode: Some((50, Duration::from_secs(1))), batch: 1 });
        assert!(p.is_measured());
        assert_eq!(p.time_to(51), Some(Duration::from_millis(1200)));
    }

    #[test]
    fn samples_move_the_average_by_alpha() {
        let mut p = measured(100, 10.0);
        p.record(PaceSample { ttft: Some(Duration::from_millis(200)), decode: None, batch: 1 });
        assert!((p.ttft_secs().unwrap() - 0.13).abs() < 1e-9);
    }

    #[test]
    fn a_free_sequence_starts_now_and_a_full_worker_waits_for_the_jobs_ahead() {
        let now = Instant::now();
        let s = |n: u64| now + Duration::from_secs(n);
        // 10 tokens a second, first token at once: a job of n x 10 + 1 tokens takes n seconds.
        let pace = measured(0, 10.0);
        let job = |secs: u64| JobPlan { placed: now, max_tokens: secs as u32 * 10 + 1, deadline: s(50) };
        let start = |jobs: &[JobPlan]| expected_start(now, jobs.iter(), 2, &pace);
        assert_eq!(start(&[job(30)]), now);
        assert_eq!(start(&[job(30), job(10)]), s(10), "the first job to end frees a sequence");
        assert_eq!(start(&[job(30), job(10), job(20)]), s(30), "one job waits ahead, for 10 s then 20 s");
        let overdue = JobPlan { placed: now - Duration::from_secs(60), ..job(1) };
        assert_eq!(start(&[overdue, job(5)]), now, "overdue: its sequence frees now");
    }

    #[test]
    fn jobs_placed_before_the_worker_was_measured_are_replanned_at_its_pace() {
        let now = Instant::now();
        let jobs: Vec<JobPlan> =
            (0..6).map(|_| JobPlan { placed: now, max_tokens: 21, deadline: now + Duration::from_secs(50) }).collect();
        // Unmeasured: every job may run to its deadline.
        assert_eq!(expected_start(now, jobs.iter(), 2, &Pace::default()), now + Duration::from_secs(50));
        // Measured at 10 tokens/s: three rounds of 2 s each on two sequences, then a free one.
        let start = expected_start(now, jobs.iter(), 2, &measured(0, 10.0));
        assert_eq!(start, now + Duration::from_secs(6));
    }

    #[test]
    fn a_job_ends_at_its_pace_or_its_deadline() {
        let now = Instant::now();
        let deadline = now + Duration::from_secs(50);
        let pace = measured(500, 10.0);
        assert_eq!(expected_end(now, &pace, 11, deadline), now + Duration::from_millis(1500));
        assert_eq!(expected_end(now, &pace, 12_288, deadline), deadline, "12,288 tokens run to the deadline");
        assert_eq!(expected_end(now, &Pace::default(), 1, deadline), deadline, "unmeasured: the deadline");
    }

    #[test]
    fn a_sample_from_a_queued_start_says_nothing_about_prefill() {
        let t0 = Instant::now();
        let gen = Generation {
            text: "x".into(),
            tool_calls: Vec::new(),
            finish_reason: crate::inference::request::FinishReason::Stop,
            prompt_tokens: 10,
            completion_tokens: 11,
            first_token_at: Some(t0 + Duration::from_millis(300)),
            started_at: t0,
            finished_at: t0 + Duration::from_millis(1300),
            cut_by_deadline: false,
            worker: String::new(),
        };
        let free = PaceSample::of(&gen, t0, true);
        assert_eq!(free.ttft, Some(Duration::from_millis(300)));
        assert_eq!(free.decode, Some((10, Duration::from_secs(1))));
        assert_eq!(PaceSample::of(&gen, t0, false).ttft, None);
    }
}
