//! The validator's sampling — nucleus (top_p) on the raw distribution, then temperature, then one
//! random draw — computed without sorting the vocabulary.
//!
//! llama.cpp's chain (`top_p` → `temp` → `dist`) sorts candidates until it holds the nucleus, which
//! on flat distributions is most of the vocabulary: milliseconds per token at 152k tokens, one
//! sequence after another, while the GPU waits. This sampler keeps the same result and costs a few
//! linear, vectorised passes:
//!
//! 1. the maximum logit `m`;
//! 2. `e_i = exp(x_i - m)` and their sum `S`, plus each token's bucket on a fine logit grid below
//!    `m` (monotone in the logit, so a bucket holds a contiguous range of the sorted order);
//! 3. a mass histogram of the buckets, walked from the top until it holds `top_p * S`: the
//!    nucleus' boundary lies in that bucket, and only its members (a few hundred tokens at most on
//!    Gaussian logits) are sorted to find the exact cut. The histogram is the one scattered pass,
//!    so it covers only a *window* of buckets: every 16th token estimates where the boundary
//!    lies, one vector pass over the buckets sums the exact mass before the window while listing
//!    the window's tokens (a few percent of the vocabulary), and when that mass falls short of
//!    `top_p * S` and the walk through the window's histogram reaches it, the boundary is
//!    provably inside. When the sample misled, the whole histogram is built instead: the
//!    estimate only ever costs time, never exactness;
//! 4. the draw, by rejection when the temperature is at most 1 (the validator's 0.7): propose a
//!    token in proportion to `e_i` (block sums make that a binary search and one 64-token walk),
//!    reject it outside the nucleus, accept it with probability `e_i^(1/t - 1)` — exactly the
//!    temperature distribution over the nucleus, in ~5 proposals on the flattest logits. Above 1,
//!    or after 64 rejections, the temperature weights of the whole nucleus are computed and one
//!    uniform draw walks their block sums: the same distribution, one more pass.
//!
//! Semantics kept from llama.cpp's `top_p(p, min_keep = 1)`: tokens in descending logit order
//! (ties: lower token id first — llama.cpp's order among ties is unspecified), the nucleus is the
//! shortest prefix whose probability mass reaches `p` (the boundary token is included). Then
//! `temp(t)` divides the kept logits by `t` and `dist` draws from their softmax. Mass is summed
//! in f32 within 64-token blocks and in f64 across them, llama.cpp sums in f32 in sorted order,
//! so the two agree on the nucleus except for tokens whose cumulative mass lies within float
//! rounding of `p` (~1e-6 here, up to ~1e-4 in llama.cpp at 152k tokens); the exponential is a
//! polynomial within 3 ulp of `expf`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Buckets over the logit range below the maximum. Finer buckets mean fewer tokens to sort at the
/// boundary; 4096 f64 masses are 32 KiB.
const BUCKETS: usize = 4096;
/// The histogram spans at most this many logits below the maximum; everything further down shares
/// the last bucket. `exp(-40)` is 4e-18: below that no realistic `top_p < 1` reaches.
const MAX_SPAN: f32 = 40.0;
/// Temperature weights are summed per block so the draw walks block sums, then one block.
const BLOCK: usize = 64;
/// Below this exponent `exp` is taken as 0 (`exp(-80)` = 1.8e-35, nothing next to the maximum's 1).
const EXP_FLOOR: f32 = -80.0;

/// Draws tokens the way the validator asks: nucleus of the raw distribution, temperature, draw.
/// One per generating sequence; fresh randomness per challenge. Scratch buffers live here so the
/// per-token path does not allocate once warm.
pub struct TokenSampler {
    temperature: f32,
    top_p: f32,
    rng: StdRng,
    /// AVX2 and FMA are available: the passes run 8 tokens at a time.
    fast: bool,
    /// `exp(x - max)` for every token; then, on the full path, the temperature weights.
    weights: Vec<f32>,
    /// Sums of `weights` per `BLOCK` tokens, so a draw walks blocks, then one block.
    block_sums: Vec<f32>,
    /// Running totals of `block_sums`, for the proposals' binary search.
    prefix: Vec<f64>,
    /// Each token's bucket (u16: 4096 buckets, half the memory traffic of u32).
    buckets: Vec<u16>,
    hist: Vec<f64>,
    /// The boundary bucket's members: (logit, token, mass).
    members: Vec<(f32, u32, f32)>,
    positions: Vec<u32>,
    /// The estimated window's tokens, in token order.
    window: Vec<u32>,
    /// Pass 2's sample for the estimate: mass per bucket, then squared mass per bucket.
    sample: Vec<f32>,
    /// `MAX_PROPOSALS`; tests set 0 to exercise the full pass.
    max_proposals: usize,
    /// Estimate a window before binning; tests turn it off to exercise the full histogram.
    windowed: bool,
    /// How the last nucleus was found, for tests.
    last_path: NucleusPath,
}

/// How `nucleus` found the boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NucleusPath {
    /// top_p of 1: nothing to find.
    Everything,
    /// Inside the estimated window (the common case).
    Window,
    /// The whole histogram: small vocabularies, or the estimate missed.
    Full,
}

/// Tokens between the subsample's members when estimating the window (one per cache line).
const STRIDE: usize = 16;
/// Below this many tokens the whole histogram is cheap enough; the estimate would not pay.
const MIN_WINDOWED: usize = 8192;

/// Where the nucleus ends: every token with a higher logit is in, and among tokens with exactly
/// this logit those up to this id.
#[derive(Debug, Clone, Copy)]
struct Cut {
    logit: f32,
    id: u32,
}

impl Cut {
    const EVERYTHING: Cut = Cut { logit: f32::NEG_INFINITY, id: u32::MAX };

    fn keeps(&self, logit: f32, id: u32) -> bool {
        logit > self.logit || (logit == self.logit && id <= self.id)
    }
}

/// Proposals tried before the exact but slower full pass (each is accepted with probability
/// ~0.2 on the flattest logits, so 64 failures in a row happen about once in 10^6 tokens).
const MAX_PROPOSALS: usize = 64;

impl TokenSampler {
    /// A sampler seeded from the thread's OS-seeded generator: the validator flags near-identical
    /// answers as sybils, so no two challenges share a stream.
    pub fn new(temperature: f32, top_p: f32) -> Self {
        let rng = StdRng::from_rng(rand::thread_rng()).unwrap_or_else(|_| StdRng::seed_from_u64(rand::random()));
        Self::with_rng(temperature, top_p, rng)
    }

    /// A reproducible sampler, for tests and benchmarks.
    pub fn with_seed(temperature: f32, top_p: f32, seed: u64) -> Self {
        Self::with_rng(temperature, top_p, StdRng::seed_from_u64(seed))
    }

    fn with_rng(temperature: f32, top_p: f32, rng: StdRng) -> Self {
        // top_p outside (0, 1) disables the nucleus, as the validator's client does.
        let top_p = if top_p > 0.0 && top_p < 1.0 { top_p } else { 1.0 };
        Self {
            temperature,
            top_p,
            rng,
            fast: simd_available(),
            weights: Vec::new(),
            block_sums: Vec::new(),
            prefix: Vec::new(),
            buckets: Vec::new(),
            hist: Vec::with_capacity(2 * BUCKETS),
            members: Vec::new(),
            positions: Vec::new(),
            window: Vec::new(),
            sample: Vec::with_capacity(2 * BUCKETS),
            max_proposals: MAX_PROPOSALS,
            windowed: true,
            last_path: NucleusPath::Everything,
        }
    }

    /// The next token for these logits (one per vocabulary entry). Greedy only when temperature is
    /// 0 or below; degenerate logits (empty, all NaN, infinite) fall back to the argmax.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let Some((max, cut)) = self.nucleus(logits) else { return argmax(logits) };
        if self.top_p < 1.0 && self.temperature <= 1.0 {
            if let Some(token) = self.propose_and_accept(logits, max, cut) {
                return token;
            }
        }
        if !self.temperature_weights(logits, max, cut) {
            return argmax(logits);
        }
        let total = self.block_sums.iter().map(|&s| f64::from(s)).sum::<f64>();
        let target = self.rng.gen::<f64>() * total;
        let mut acc = 0.0f64;
        for (block, &sum) in self.block_sums.iter().enumerate() {
            let next = acc + f64::from(sum);
            if next > target {
                return self.walk_block(block, acc, target);
            }
            acc = next;
        }
        // Rounding at the very end of the walk: the last kept token.
        self.weights.iter().rposition(|&w| w > 0.0).map_or_else(|| argmax(logits), |i| i as u32)
    }

    /// The distribution `sample` draws from: (token, probability) for every token of the nucleus,
    /// in token order, computed the direct way (all temperature weights). For tests and
    /// benchmarks; allocates.
    pub fn distribution(&mut self, logits: &[f32]) -> Vec<(u32, f64)> {
        let argmax_only = || if logits.is_empty() { Vec::new() } else { vec![(argmax(logits), 1.0)] };
        if self.temperature <= 0.0 {
            return argmax_only();
        }
        let Some((max, cut)) = self.nucleus(logits) else { return argmax_only() };
        if !self.temperature_weights(logits, max, cut) {
            return argmax_only();
        }
        let total: f64 = self.weights.iter().map(|&w| f64::from(w)).sum();
        self.weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0.0)
            .map(|(i, &w)| (i as u32, f64::from(w) / total))
            .collect()
    }

    /// The token where the running sum, starting at `acc` at the start of `block`, passes
    /// `target`; rounding between the block's lane sum and this walk falls back to its last
    /// token of non-zero weight.
    fn walk_block(&self, block: usize, mut acc: f64, target: f64) -> u32 {
        let start = block * BLOCK;
        let end = (start + BLOCK).min(self.weights.len());
        for (i, &w) in self.weights[start..end].iter().enumerate() {
            acc += f64::from(w);
            if acc > target {
                return (start + i) as u32;
            }
        }
        let last = self.weights[start..end].iter().rposition(|&w| w > 0.0).unwrap_or(0);
        (start + last) as u32
    }

    /// The maximum logit and the nucleus' boundary; with top_p < 1 this also leaves
    /// `exp(x - max)` in `weights` and their block sums in `block_sums`. None when the logits
    /// leave nothing to draw from (empty, no finite maximum).
    fn nucleus(&mut self, logits: &[f32]) -> Option<(f32, Cut)> {
        let n = logits.len();
        let (max, min) = max_min(self.fast, logits);
        if n == 0 || !max.is_finite() {
            return None;
        }
        self.weights.resize(n, 0.0);
        self.members.clear();
        if self.top_p >= 1.0 {
            self.last_path = NucleusPath::Everything;
            return Some((max, Cut::EVERYTHING));
        }
        self.buckets.resize(n, 0);
        let scale = (BUCKETS - 1) as f32 / (max - min).clamp(1e-6, MAX_SPAN);
        // Pass 2 also bins every STRIDE-th token's mass (and its square) for the estimate.
        self.sample.clear();
        self.sample.resize(2 * BUCKETS, 0.0);
        let total = exp_and_buckets(
            self.fast,
            logits,
            max,
            scale,
            &mut self.weights,
            &mut self.buckets,
            &mut self.block_sums,
            &mut self.sample,
        );
        let target = f64::from(self.top_p) * total;
        if self.windowed && n >= MIN_WINDOWED {
            if let Some((from, to)) = self.estimate_window(max, scale, total) {
                let before = window_histogram(
                    self.fast,
                    &self.buckets,
                    &self.weights,
                    (from, to),
                    &mut self.hist,
                    &mut self.window,
                );
                // The boundary is inside the window exactly when the mass before it falls short
                // of the target and the walk through the window reaches it.
                if before < target {
                    if let Some(cut) = self.find_cut(logits, target, (from as usize, to as usize), before) {
                        self.last_path = NucleusPath::Window;
                        return Some((max, cut));
                    }
                }
            }
        }
        self.last_path = NucleusPath::Full;
        mass_histogram(&self.buckets, &self.weights, &mut self.hist);
        self.find_cut(logits, target, (0, BUCKETS - 1), 0.0).map(|cut| (max, cut))
    }

    /// Where the nucleus probably ends, as a window of buckets `(from, to)`, estimated from every
    /// `STRIDE`-th token's mass. It is estimated from the *tail*: the nucleus ends where the
    /// mass below it drops to `(1 - top_p) * S`, and the tail is many light tokens, which a
    /// sample measures well, while the few heavy tokens at the top, which a sample may miss, only
    /// ever sit above the window. The window spans the buckets where the sampled tail is within
    /// four standard errors (and 2 % of its target) of that mass. It never reaches below
    /// `max + ln((1 - top_p) / n)`: tokens there weigh less than `(1 - top_p) / n` each, so all
    /// together less than `1 - top_p` of the mass (the maximum alone weighs 1), and the nucleus
    /// ends above them. None when the sample holds no tail at all.
    /// The sample is pass 2's (`sample`: masses, then squares, per bucket).
    fn estimate_window(&mut self, max: f32, scale: f32, total: f64) -> Option<(u32, u32)> {
        let n = self.weights.len();
        let (mass, squares) = self.sample.split_at(BUCKETS);
        let p = f64::from(self.top_p);
        let goal = (1.0 - p) * total;
        let stride = STRIDE as f64;
        // Walk up from the far tail: `tail` estimates the mass at and below the bucket, `var`
        // its variance (each sampled token stands for `STRIDE`). The margin is
        // `4 sqrt(var) + 2 % of the goal`; the comparisons with it are squared, so that the walk
        // over 4,096 buckets takes no square root.
        let (low, high) = (0.98 * goal, 1.02 * goal);
        // `x >= 4 sqrt(var)`
        let clears = |x: f64, var: f64| x >= 0.0 && x * x >= 16.0 * var;
        let (mut tail, mut var) = (0.0f64, 0.0f64);
        let mut to = None;
        let mut from = 0u32;
        for b in (0..BUCKETS).rev() {
            let below = tail;
            tail += stride * f64::from(mass[b]);
            var += stride * stride * f64::from(squares[b]);
            // `to`: the deepest bucket whose estimated tail beyond it is surely within the goal
            // (`below <= goal - margin < tail`).
            if to.is_none() && clears(low - below, var) && !clears(low - tail, var) {
                to = Some(b as u32);
            }
            // `from`: the first bucket (walking up) whose estimated tail surely exceeds the goal
            // (`tail >= goal + margin`).
            if clears(tail - high, var) {
                from = b as u32;
                break;
            }
        }
        let floor = max + ((1.0 - p) / n as f64).ln() as f32;
        let to = to.unwrap_or(BUCKETS as u32 - 1).min(u32::from(bucket_of(floor, max, scale)));
        (from <= to).then_some((from, to))
    }

    /// Rejection sampling, for temperatures up to 1: propose a token from `exp(x - max)` over the
    /// whole vocabulary (already computed for the nucleus), reject it outside the nucleus, accept
    /// it with probability `exp((x - max) * (1/t - 1))`, at most 1. An accepted token is
    /// distributed exactly as `exp((x - max) / t)` over the nucleus, so this skips the pass of
    /// temperature weights over the whole vocabulary. None after `MAX_PROPOSALS` rejections; the
    /// caller then draws the full way, which keeps the result exact.
    fn propose_and_accept(&mut self, logits: &[f32], max: f32, cut: Cut) -> Option<u32> {
        self.prefix.clear();
        let mut acc = 0.0f64;
        for &s in &self.block_sums {
            acc += f64::from(s);
            self.prefix.push(acc);
        }
        let exponent = 1.0 / self.temperature - 1.0;
        for _ in 0..self.max_proposals {
            let target = self.rng.gen::<f64>() * acc;
            let block = self.prefix.partition_point(|&p| p <= target);
            if block == self.prefix.len() {
                continue;
            }
            let before = if block == 0 { 0.0 } else { self.prefix[block - 1] };
            let token = self.walk_block(block, before, target);
            let x = logits[token as usize];
            if cut.keeps(x, token) && self.rng.gen::<f32>() < exp_neg((x - max) * exponent) {
                return Some(token);
            }
        }
        None
    }

    /// Fills `weights` with the temperature weights of the nucleus (0 outside it) and
    /// `block_sums` with their sums per block. False when nothing has weight.
    fn temperature_weights(&mut self, logits: &[f32], max: f32, cut: Cut) -> bool {
        let inv_t = 1.0 / self.temperature;
        temperature_weights(self.fast, logits, max, inv_t, cut.logit, &mut self.weights, &mut self.block_sums);
        // Tokens tied with the cut's logit but after it in id order are outside the nucleus.
        let mut fixed = false;
        for &(logit, id, _) in &self.members {
            if logit == cut.logit && id > cut.id {
                self.weights[id as usize] = 0.0;
                fixed = true;
            }
        }
        if fixed {
            let n = self.weights.len();
            for (block, sum) in self.block_sums.iter_mut().enumerate() {
                let start = block * BLOCK;
                *sum = self.weights[start..(start + BLOCK).min(n)].iter().sum();
            }
        }
        let total: f32 = self.block_sums.iter().sum();
        total > 0.0 && total.is_finite()
    }

    /// Walks the histogram over the buckets `range` (inclusive), starting with the mass `above`
    /// the range, to the bucket where the mass reaches `target`, then sorts that bucket's members
    /// to find the exact boundary token. Float rounding can put the boundary one bucket further
    /// than the histogram said; the walk then continues there. None when a window (a range that
    /// does not end at the last bucket) runs out first: the caller then builds the whole histogram.
    fn find_cut(&mut self, logits: &[f32], target: f64, range: (usize, usize), mut above: f64) -> Option<Cut> {
        let (mut bucket, end) = range;
        while bucket <= end {
            if above + self.hist[bucket] < target && bucket < end {
                above += self.hist[bucket];
                bucket += 1;
                continue;
            }
            self.positions.clear();
            if end < BUCKETS - 1 {
                // A window: its list already holds the bucket's tokens.
                let (buckets, want) = (&self.buckets, bucket as u16);
                self.positions.extend(self.window.iter().filter(|&&i| buckets[i as usize] == want));
            } else {
                positions_in_bucket(self.fast, &self.buckets, bucket as u16, &mut self.positions);
            }
            self.members.clear();
            self.members.extend(self.positions.iter().map(|&i| (logits[i as usize], i, self.weights[i as usize])));
            self.members.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut last = None;
            for &(x, id, e) in &self.members {
                above += f64::from(e);
                last = Some(Cut { logit: x, id });
                if above >= target {
                    return last;
                }
            }
            // The mass ran out before the target (rounding, or top_p next to 1): keep going, and
            // if this was the last bucket, everything seen is the nucleus.
            if bucket + 1 == BUCKETS {
                return last.or(Some(Cut::EVERYTHING));
            }
            bucket += 1;
        }
        None
    }
}

#[cfg(target_arch = "x86_64")]
fn simd_available() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn simd_available() -> bool {
    false
}

/// The first token with the highest logit (NaN never wins); 0 for empty logits.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, &x) in logits.iter().enumerate() {
        if x > best_logit {
            best_logit = x;
            best = i;
        }
    }
    best as u32
}

// The passes below dispatch to the AVX2 versions when `fast` (checked at construction) and run
// a portable scalar version otherwise, with the same formulas.

fn max_min(fast: bool, x: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: `fast` is set only when the CPU reports AVX2 and FMA (`simd_available`).
        return unsafe { avx2::max_min(x) };
    }
    let _ = fast;
    x.iter().fold((f32::NEG_INFINITY, f32::INFINITY), |(hi, lo), &v| {
        (if v > hi { v } else { hi }, if v < lo { v } else { lo })
    })
}

/// Pass 2: `e_i = exp(x_i - max)` into `e`, each token's bucket into `buckets`, the sums of `e`
/// per `BLOCK` into `block_sums`, and the estimate's sample: the mass of every `STRIDE`-th token
/// (from `STRIDE / 2`) added at its bucket in `sample[..BUCKETS]`, its square in
/// `sample[BUCKETS..]`. Returns `sum e_i` (f64).
#[allow(clippy::too_many_arguments)]
fn exp_and_buckets(
    fast: bool,
    x: &[f32],
    max: f32,
    scale: f32,
    e: &mut [f32],
    buckets: &mut [u16],
    block_sums: &mut Vec<f32>,
    sample: &mut [f32],
) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in `max_min`; `nucleus` sized `e` and `buckets` to `x`, `sample` to 2 x BUCKETS.
        return unsafe { avx2::exp_and_buckets(x, max, scale, e, buckets, block_sums, sample) };
    }
    let _ = fast;
    block_sums.clear();
    let mut sum = 0.0f64;
    for ((xb, eb), bb) in x.chunks(BLOCK).zip(e.chunks_mut(BLOCK)).zip(buckets.chunks_mut(BLOCK)) {
        let block = exp_and_buckets_scalar(xb, max, scale, eb, bb, sample);
        block_sums.push(block);
        sum += f64::from(block);
    }
    sum
}

/// Pass 2 over one block (whose start is a multiple of `STRIDE`), one token at a time; returns
/// the block's sum (f32, as the vector pass).
fn exp_and_buckets_scalar(x: &[f32], max: f32, scale: f32, e: &mut [f32], b: &mut [u16], sample: &mut [f32]) -> f32 {
    let mut sum = 0.0f32;
    for (i, ((&v, ev), bv)) in x.iter().zip(e.iter_mut()).zip(b.iter_mut()).enumerate() {
        *ev = exp_neg(v - max);
        *bv = bucket_of(v, max, scale);
        sum += *ev;
        if i % STRIDE == STRIDE / 2 {
            add_to_sample(sample, *bv, *ev);
        }
    }
    sum
}

/// One sampled token into the estimate's sample (see `exp_and_buckets`).
#[inline]
fn add_to_sample(sample: &mut [f32], bucket: u16, e: f32) {
    let b = usize::from(bucket) & (BUCKETS - 1);
    sample[b] += e;
    sample[BUCKETS + b] += e * e;
}

fn temperature_weights(
    fast: bool,
    x: &[f32],
    max: f32,
    inv_t: f32,
    cut: f32,
    w: &mut [f32],
    block_sums: &mut Vec<f32>,
) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in `max_min`; `prepare` sized `w` to `x`.
        return unsafe { avx2::temperature_weights(x, max, inv_t, cut, w, block_sums) };
    }
    let _ = fast;
    block_sums.clear();
    for (xb, wb) in x.chunks(BLOCK).zip(w.chunks_mut(BLOCK)) {
        block_sums.push(temperature_weights_scalar(xb, max, inv_t, cut, wb));
    }
}

fn positions_in_bucket(fast: bool, buckets: &[u16], bucket: u16, out: &mut Vec<u32>) {
    #[cfg(target_arch = "x86_64")]
    if fast {
        // SAFETY: as in `max_min`.
        return unsafe { avx2::positions_in_bucket(buckets, bucket, out) };
    }
    let _ = fast;
    out.extend(buckets.iter().enumerate().filter(|(_, &b)| b == bucket).map(|(i, _)| i as u32));
}

/// The mass of each bucket into `hist`. The one scattered pass of the sampler: two histograms,
/// even and odd tokens, so consecutive tokens in the same bucket do not wait on each other's
/// store; then folded into one.
fn mass_histogram(buckets: &[u16], e: &[f32], hist: &mut Vec<f64>) {
    hist.clear();
    hist.resize(2 * BUCKETS, 0.0);
    let (even, odd) = hist.split_at_mut(BUCKETS);
    let (even, odd): (&mut [f64; BUCKETS], &mut [f64; BUCKETS]) =
        (even.try_into().expect("BUCKETS long"), odd.try_into().expect("BUCKETS long"));
    let pairs = buckets.chunks_exact(2).zip(e.chunks_exact(2));
    for (b, e) in pairs {
        // Buckets are at most BUCKETS - 1 (a power of two): the mask only drops the bound check.
        even[b[0] as usize & (BUCKETS - 1)] += f64::from(e[0]);
        odd[b[1] as usize & (BUCKETS - 1)] += f64::from(e[1]);
    }
    if buckets.len() % 2 == 1 {
        even[buckets[buckets.len() - 1] as usize & (BUCKETS - 1)] += f64::from(e[e.len() - 1]);
    }
    for (a, b) in even.iter_mut().zip(odd.iter()) {
        *a += b;
    }
    hist.truncate(BUCKETS);
}

/// The window's tokens into `members` (token order), the mass of its buckets `from..=to` into
/// `hist` (the others 0); returns the exact mass before the window, summed like pass 2's total
/// (f32 within a block, f64 across blocks) so that it compares with its target.
fn window_histogram(
    fast: bool,
    buckets: &[u16],
    e: &[f32],
    window: (u32, u32),
    hist: &mut Vec<f64>,
    members: &mut Vec<u32>,
) -> f64 {
    // Only the window's buckets are read (`find_cut` walks `from..=to`).
    hist.resize(BUCKETS, 0.0);
    hist[window.0 as usize..=window.1 as usize].fill(0.0);
    members.clear();
    #[cfg(target_arch = "x86_64")]
    let before = if fast {
        // SAFETY: as in `max_min`; `buckets` and `e` have the same length (`nucleus`).
        unsafe { avx2::window_masses(buckets, e, window.0 as u16, window.1 as u16, members) }
    } else {
        window_masses_scalar(buckets, e, window, members)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let before = {
        let _ = fast;
        window_masses_scalar(buckets, e, window, members)
    };
    for &i in members.iter() {
        let i = i as usize;
        hist[usize::from(buckets[i]) & (BUCKETS - 1)] += f64::from(e[i]);
    }
    before
}

/// `window_histogram`'s mass before the window and its members, one token at a time.
fn window_masses_scalar(buckets: &[u16], e: &[f32], window: (u32, u32), members: &mut Vec<u32>) -> f64 {
    let mut before_window = 0.0f64;
    for (block, (bb, eb)) in buckets.chunks(BLOCK).zip(e.chunks(BLOCK)).enumerate() {
        let mut before = 0.0f32;
        for (i, (&b, &w)) in bb.iter().zip(eb).enumerate() {
            let b = u32::from(b);
            if b < window.0 {
                before += w;
            } else if b <= window.1 {
                members.push((block * BLOCK + i) as u32);
            }
        }
        before_window += f64::from(before);
    }
    before_window
}

/// One block of temperature weights (0 below the cut); returns their sum.
fn temperature_weights_scalar(x: &[f32], max: f32, inv_t: f32, cut: f32, w: &mut [f32]) -> f32 {
    let mut sum = 0.0;
    for (&v, wv) in x.iter().zip(w.iter_mut()) {
        *wv = if v >= cut { exp_neg((v - max) * inv_t) } else { 0.0 };
        sum += *wv;
    }
    sum
}

/// A token's bucket: 0 at the maximum, one per `1 / scale` logits below it, rounded to nearest
/// (monotone in the logit); the far tail and NaN share the last bucket.
fn bucket_of(v: f32, max: f32, scale: f32) -> u16 {
    let q = (max - v) * scale;
    let q = if q < (BUCKETS - 1) as f32 { q } else { (BUCKETS - 1) as f32 };
    q.round_ties_even() as u16
}

/// The polynomial of `exp(r) = 1 + r + r^2 (C2 + C3 r + C4 r^2 + C5 r^3)` on
/// `|r| <= ln(2) / 2`: a weighted least-squares fit to the relative error, within 1.7e-7 of
/// `exp` in f32 (under 3 ulp; the tests allow 1e-5 on a probability and 1e-6 of mass at the
/// nucleus' edge). One degree below Cephes' `expf`: two fewer multiply-adds per token in the pass
/// every token goes through.
const EXP_C2: f32 = 0.499_992_3;
const EXP_C3: f32 = 0.166_671_14;
const EXP_C4: f32 = 0.041_890_12;
const EXP_C5: f32 = 0.008_312_528;

/// `exp(x)` for `x <= 0` by Cody–Waite range reduction and the polynomial above (< 3 ulp); 0
/// below `EXP_FLOOR` and for NaN.
fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer and leaves it in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    if x.is_nan() || x < EXP_FLOOR {
        return 0.0;
    }
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let k = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_C5;
    p = p * r + EXP_C4;
    p = p * r + EXP_C3;
    p = p * r + EXP_C2;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits((k.wrapping_add(127) as u32).wrapping_shl(23))
}

/// Logits shaped like the ones the miner sees, for tests and `loosh-bench sampling`: seeded, so a
/// failure reproduces.
pub mod shapes {
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    /// Gaussian logits with standard deviation `sd` (1.2: flat like a random-weight model; 3: like
    /// SmolLM2's real logits; 6: peaked).
    pub fn gaussian(vocab: usize, sd: f32, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..vocab)
            .map(|_| {
                // Box–Muller; `rand` 0.8 without `rand_distr` has no normal distribution.
                let u1: f64 = 1.0 - rng.gen::<f64>();
                let u2: f64 = rng.gen();
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32 * sd
            })
            .collect()
    }

    /// Zipf-like logits: probability proportional to rank^-1.1, ranks shuffled over the ids —
    /// a long tail where the nucleus keeps thousands of tokens of tiny mass.
    pub fn long_tailed(vocab: usize, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ranks: Vec<usize> = (1..=vocab).collect();
        ranks.shuffle(&mut rng);
        ranks.iter().map(|&r| -1.1 * (r as f32).ln()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::shapes::{gaussian, long_tailed};
    use super::*;
    use llama_cpp_2::sampling::LlamaSampler;
    use llama_cpp_2::token::data::LlamaTokenData;
    use llama_cpp_2::token::data_array::LlamaTokenDataArray;
    use llama_cpp_2::token::LlamaToken;

    /// The straightforward definition, in f64: sort everything, take the shortest prefix reaching
    /// `top_p` of the mass, softmax of logit / t over it.
    struct Reference {
        /// Token ids, highest logit first (ties: lower id first).
        order: Vec<u32>,
        /// Cumulative probability after the first k+1 tokens of `order`.
        cumulative: Vec<f64>,
        nucleus: usize,
    }

    impl Reference {
        fn new(logits: &[f32], top_p: f32) -> Self {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let mut order: Vec<u32> = (0..logits.len() as u32).collect();
            order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
            let mass: Vec<f64> = order.iter().map(|&i| (logits[i as usize] as f64 - max).exp()).collect();
            let total: f64 = mass.iter().sum();
            let mut acc = 0.0;
            let cumulative: Vec<f64> = mass
                .iter()
                .map(|m| {
                    acc += m;
                    acc / total
                })
                .collect();
            let top_p = if top_p > 0.0 && top_p < 1.0 { top_p as f64 } else { 1.0 };
            let nucleus = cumulative.iter().position(|&c| c >= top_p).map_or(order.len(), |k| k + 1);
            Self { order, cumulative, nucleus }
        }

        fn probabilities(&self, logits: &[f32], temperature: f32) -> Vec<(u32, f64)> {
            let kept = &self.order[..self.nucleus];
            let max = logits[kept[0] as usize] as f64;
            let w: Vec<f64> =
                kept.iter().map(|&i| ((logits[i as usize] as f64 - max) / temperature as f64).exp()).collect();
            let total: f64 = w.iter().sum();
            let mut out: Vec<(u32, f64)> = kept.iter().zip(&w).map(|(&i, &w)| (i, w / total)).collect();
            out.sort_by_key(|&(i, _)| i);
            out
        }

        /// Asserts that `kept` (token ids) is the reference nucleus, except that tokens whose
        /// cumulative probability lies within `slack` of `top_p` may fall on either side: those
        /// are decided by float rounding of the running sum, in the reference as in llama.cpp.
        /// Ties of logit are matched by value, so any order among them is accepted.
        fn assert_nucleus(&self, logits: &[f32], kept: &[u32], top_p: f32, slack: f64, what: &str) {
            let k = kept.len();
            let (lo, hi) = (k.min(self.nucleus), k.max(self.nucleus));
            for j in lo.max(1)..hi {
                let c = self.cumulative[j - 1];
                assert!(
                    (c - top_p as f64).abs() <= slack,
                    "{what}: nucleus of {k} tokens, reference {}: cumulative {c} at {j} is not within {slack} of {top_p}",
                    self.nucleus
                );
            }
            let mut got: Vec<f32> = kept.iter().map(|&i| logits[i as usize]).collect();
            let mut want: Vec<f32> = self.order[..k].iter().map(|&i| logits[i as usize]).collect();
            got.sort_by(|a, b| b.total_cmp(a));
            want.sort_by(|a, b| b.total_cmp(a));
            assert!(got == want, "{what}: the kept tokens are not the {k} highest logits");
        }
    }

    fn cases() -> Vec<(String, Vec<f32>)> {
        let mut out = Vec::new();
        for vocab in [49_152, 151_936] {
            out.push((format!("flat sd 1.2, {vocab}"), gaussian(vocab, 1.2, 1)));
            out.push((format!("peaked sd 6, {vocab}"), gaussian(vocab, 6.0, 2)));
            out.push((format!("long-tailed, {vocab}"), long_tailed(vocab, 3)));
        }
        out
    }

    /// Largest relative error allowed on a nucleus token's probability: the polynomial exp is
    /// within ~1.7e-7 of the true value and the sums over 152k terms add rounding of the same
    /// order times a few hundred at most; 1e-5 leaves a wide margin yet catches any wrong weight
    /// (a temperature off by 1 % moves probabilities by far more).
    const PROB_TOLERANCE: f64 = 1e-5;

    /// The nucleus and the probabilities of one sampler path against the full-sort reference;
    /// `windowed` false forces the whole histogram. Returns how each case's nucleus was found.
    fn check_against_reference(fast: bool, windowed: bool) -> Vec<(String, NucleusPath)> {
        let mut paths = Vec::new();
        for (what, logits) in cases() {
            for top_p in [0.95f32, 0.5] {
                let reference = Reference::new(&logits, top_p);
                for temperature in [0.7f32, 1.0] {
                    let mut sampler = TokenSampler::with_seed(temperature, top_p, 7);
                    sampler.fast &= fast;
                    sampler.windowed = windowed;
                    let got = sampler.distribution(&logits);
                    let ids: Vec<u32> = got.iter().map(|&(i, _)| i).collect();
                    let what = format!("{what}, top_p {top_p}, t {temperature}, fast {}", sampler.fast);
                    paths.push((what.clone(), sampler.last_path));
                    // Our masses are summed in f64 from f32 terms within 3 ulp: 1e-6 of slack.
                    reference.assert_nucleus(&logits, &ids, top_p, 1e-6, &what);
                    if ids.len() == reference.nucleus {
                        let want = reference.probabilities(&logits, temperature);
                        for (&(i, p), &(j, q)) in got.iter().zip(&want) {
                            assert_eq!(i, j, "{what}");
                            assert!((p - q).abs() <= PROB_TOLERANCE * q, "{what}: token {i}: {p} vs {q}");
                        }
                    }
                }
            }
        }
        paths
    }

    #[test]
    fn the_nucleus_and_its_probabilities_match_a_full_sort() {
        let paths = check_against_reference(true, true);
        // The cheap path is the one these realistic shapes take: the estimated window held the
        // boundary every time, so its exactness is what the comparisons above proved.
        for (what, path) in paths {
            assert_eq!(path, NucleusPath::Window, "{what}");
        }
    }

    #[test]
    fn the_whole_histogram_matches_a_full_sort_too() {
        for (what, path) in check_against_reference(true, false) {
            assert_eq!(path, NucleusPath::Full, "{what}");
        }
    }

    #[test]
    fn the_portable_path_matches_a_full_sort_too() {
        check_against_reference(false, true);
        check_against_reference(false, false);
    }

    #[test]
    fn a_subsample_that_misleads_costs_the_whole_histogram_never_exactness() {
        // Every 16th token (the subsample) sits high, the rest low and many: the sample puts the
        // boundary among the high tokens, while most of the mass, and the boundary, is below.
        let mut logits = gaussian(151_936, 1.0, 11);
        for (i, x) in logits.iter_mut().enumerate() {
            *x += if i % STRIDE == STRIDE / 2 { 6.0 } else { 0.0 };
        }
        for fast in [true, false] {
            let top_p = 0.95;
            let reference = Reference::new(&logits, top_p);
            let mut sampler = TokenSampler::with_seed(0.7, top_p, 3);
            sampler.fast &= fast;
            let ids: Vec<u32> = sampler.distribution(&logits).iter().map(|&(i, _)| i).collect();
            assert_eq!(sampler.last_path, NucleusPath::Full, "fast {fast}");
            reference.assert_nucleus(&logits, &ids, top_p, 1e-6, &format!("misleading sample, fast {fast}"));
        }
    }

    #[test]
    fn the_nucleus_matches_llama_cpps_own_top_p() {
        crate::inference::embedded::backend().expect("llama.cpp backend");
        for (what, logits) in cases() {
            for top_p in [0.95f32, 0.5] {
                let reference = Reference::new(&logits, top_p);
                let mut array = LlamaTokenDataArray::from_iter(
                    logits.iter().enumerate().map(|(i, &l)| LlamaTokenData::new(LlamaToken::new(i as i32), l, 0.0)),
                    false,
                );
                array.apply_sampler(&mut LlamaSampler::top_p(top_p, 1));
                array.apply_sampler(&mut LlamaSampler::temp(0.7));
                let theirs: Vec<u32> = array.data.iter().map(|d| d.id().0 as u32).collect();
                let ours: Vec<u32> =
                    TokenSampler::with_seed(0.7, top_p, 1).distribution(&logits).iter().map(|&(i, _)| i).collect();
                let what = format!("{what}, top_p {top_p}");
                reference.assert_nucleus(&logits, &ours, top_p, 1e-6, &format!("ours, {what}"));
                // llama.cpp adds f32 probabilities one by one over up to ~130k tokens: its running
                // sum drifts by up to ~1e-4 from the exact one, which moves its boundary by the
                // tokens within that much of top_p.
                reference.assert_nucleus(&logits, &theirs, top_p, 1e-4, &format!("llama.cpp, {what}"));
            }
        }
    }

    /// Chi-square critical value for `df` degrees of freedom at an upper-tail probability of 1e-6
    /// (Wilson–Hilferty; z = 4.753): a correct sampler fails this with probability ~1e-6 per seed.
    fn chi_square_critical(df: f64) -> f64 {
        let z = 4.753;
        let a = 2.0 / (9.0 * df);
        df * (1.0 - a + z * a.sqrt()).powi(3)
    }

    /// Draws 400,000 tokens from a 1,003-token vocabulary (not a multiple of the lanes or blocks)
    /// with sd 2 and top_p 0.9 — a nucleus of a few hundred tokens — and returns the chi-square
    /// of their counts against `want` (bins merged in id order to an expected count >= 20, so the
    /// statistic follows its distribution) and its 1e-6 critical value. Also asserts that no
    /// token outside `want` is ever drawn.
    fn chi_square_of_draws(mut sampler: TokenSampler, want: &[(u32, f64)]) -> (f64, f64) {
        let logits = gaussian(1003, 2.0, 11);
        let draws = 400_000usize;
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..draws {
            counts[sampler.sample(&logits) as usize] += 1;
        }
        let kept: std::collections::HashSet<u32> = want.iter().map(|&(i, _)| i).collect();
        for (i, &c) in counts.iter().enumerate() {
            assert!(c == 0 || kept.contains(&(i as u32)), "token {i} outside the nucleus drawn {c} times");
        }
        let (mut chi2, mut bins, mut exp_acc, mut obs_acc) = (0.0, 0usize, 0.0, 0.0);
        for &(i, p) in want {
            exp_acc += p * draws as f64;
            obs_acc += counts[i as usize] as f64;
            if exp_acc >= 20.0 {
                chi2 += (obs_acc - exp_acc).powi(2) / exp_acc;
                bins += 1;
                (exp_acc, obs_acc) = (0.0, 0.0);
            }
        }
        if exp_acc > 0.0 {
            chi2 += (obs_acc - exp_acc).powi(2) / exp_acc;
            bins += 1;
        }
        (chi2, chi_square_critical((bins - 1) as f64))
    }

    fn exact(temperature: f32) -> Vec<(u32, f64)> {
        let logits = gaussian(1003, 2.0, 11);
        let want = Reference::new(&logits, 0.9).probabilities(&logits, temperature);
        assert!((100..600).contains(&want.len()), "nucleus of {} tokens", want.len());
        want
    }

    #[test]
    fn draws_follow_the_nucleus_distribution() {
        // t 0.7: proposals and acceptance; t 0.7 with no proposals: the full pass below 1;
        // t 1.3: the full pass.
        for (temperature, proposals) in [(0.7, MAX_PROPOSALS), (0.7, 0), (1.3, MAX_PROPOSALS)] {
            let mut sampler = TokenSampler::with_seed(temperature, 0.9, 12345);
            sampler.max_proposals = proposals;
            let (chi2, critical) = chi_square_of_draws(sampler, &exact(temperature));
            assert!(chi2 < critical, "t {temperature}, {proposals} proposals: chi-square {chi2:.1} > {critical:.1}");
        }
    }

    #[test]
    fn a_wrong_temperature_fails_the_same_chi_square() {
        // The statistical test has power: draws at t 0.8 judged against t 0.7 fail it.
        let (chi2, critical) = chi_square_of_draws(TokenSampler::with_seed(0.8, 0.9, 12345), &exact(0.7));
        assert!(chi2 > critical, "chi-square {chi2:.1} <= {critical:.1}");
    }

    #[test]
    fn temperature_zero_is_the_argmax_and_only_then() {
        let mut logits = gaussian(5000, 1.0, 4);
        logits[1234] = 9.0;
        logits[4321] = 9.0; // a tie: the lower id wins
        let mut greedy = TokenSampler::with_seed(0.0, 0.95, 1);
        assert!((0..100).all(|_| greedy.sample(&logits) == 1234));
        // At t > 0 the two tied tokens hold most of the mass, yet both (and others) are drawn.
        let mut sampler = TokenSampler::with_seed(0.7, 0.95, 1);
        let draws: Vec<u32> = (0..2000).map(|_| sampler.sample(&logits)).collect();
        assert!(draws.contains(&1234) && draws.contains(&4321));
        assert!(draws.iter().any(|&t| t != 1234 && t != 4321));
    }

    #[test]
    fn different_seeds_and_fresh_samplers_draw_different_sequences() {
        let logits = gaussian(49_152, 1.2, 5);
        let run = |mut s: TokenSampler| (0..32).map(|_| s.sample(&logits)).collect::<Vec<u32>>();
        assert_eq!(run(TokenSampler::with_seed(0.7, 0.95, 1)), run(TokenSampler::with_seed(0.7, 0.95, 1)));
        assert_ne!(run(TokenSampler::with_seed(0.7, 0.95, 1)), run(TokenSampler::with_seed(0.7, 0.95, 2)));
        assert_ne!(run(TokenSampler::new(0.7, 0.95)), run(TokenSampler::new(0.7, 0.95)));
    }

    #[test]
    fn masked_and_degenerate_logits_never_panic_nor_draw_a_masked_token() {
        let mut logits = gaussian(3000, 2.0, 6);
        for x in logits.iter_mut().step_by(2) {
            *x = f32::NEG_INFINITY;
        }
        logits[7] = f32::NAN;
        for top_p in [0.95, 1.0] {
            let mut sampler = TokenSampler::with_seed(0.7, top_p, 3);
            for _ in 0..500 {
                let t = sampler.sample(&logits) as usize;
                assert!(logits[t].is_finite(), "drew masked token {t} at top_p {top_p}");
            }
        }
        let mut sampler = TokenSampler::with_seed(0.7, 0.95, 3);
        assert_eq!(sampler.sample(&[]), 0);
        assert_eq!(sampler.sample(&[f32::NAN; 10]), 0);
        assert_eq!(sampler.sample(&[f32::NEG_INFINITY; 10]), 0);
        assert_eq!(sampler.sample(&[0.0, f32::INFINITY, 1.0]), 1);
        let same = vec![0.5f32; 1000];
        assert_eq!(sampler.distribution(&same).len(), 950, "equal logits: the lowest 950 ids");
    }

    #[test]
    fn top_p_of_one_keeps_every_token_and_sorts_nothing() {
        let logits = gaussian(2000, 1.0, 8);
        for top_p in [1.0, 0.0, 1.5] {
            assert_eq!(TokenSampler::with_seed(1.0, top_p, 1).distribution(&logits).len(), 2000);
        }
    }
}
