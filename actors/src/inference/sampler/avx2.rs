//! The sampler's linear passes in AVX2 + FMA, 8 tokens at a time. Same formulas as the portable
//! passes in `sampler.rs` (the polynomial exp included); FMA rounds once where those round twice,
//! so results agree to an ulp, not bit for bit.
//!
//! Every function here is `unsafe` only because it requires AVX2 and FMA: callers check
//! `is_x86_feature_detected!` once, when the sampler is made. Loads and stores go through
//! `loadu`/`storeu` on chunks the slice iterators bound, never past a slice's end.

use std::arch::x86_64::*;

use super::{BLOCK, BUCKETS, EXP_FLOOR, STRIDE};

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const ROUND: f32 = 12_582_912.0;

/// `exp(x)` lane by lane for `x <= 0`; 0 below `EXP_FLOOR` and for NaN (see `super::exp_neg`).
#[inline]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let floor = _mm256_set1_ps(EXP_FLOOR);
    let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, floor);
    // maxps returns its second operand when the first is NaN.
    let xc = _mm256_max_ps(x, floor);
    let round = _mm256_set1_ps(ROUND);
    let t = _mm256_fmadd_ps(xc, _mm256_set1_ps(LOG2E), round);
    let n = _mm256_sub_ps(t, round);
    let k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(round));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(super::EXP_C5);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(super::EXP_C4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(super::EXP_C3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(super::EXP_C2));
    let y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127))));
    _mm256_and_ps(_mm256_mul_ps(y, scale), keep)
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// The largest and smallest logits; NaN is skipped.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn max_min(x: &[f32]) -> (f32, f32) {
    let (mut hi, mut lo) = (_mm256_set1_ps(f32::NEG_INFINITY), _mm256_set1_ps(f32::INFINITY));
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        // SAFETY: `c` holds exactly 8 floats.
        let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        // NaN in `v` yields the accumulator (second operand).
        hi = _mm256_max_ps(v, hi);
        lo = _mm256_min_ps(v, lo);
    }
    let mut his = [0.0f32; 8];
    let mut los = [0.0f32; 8];
    // SAFETY: the arrays hold 8 floats each.
    unsafe {
        _mm256_storeu_ps(his.as_mut_ptr(), hi);
        _mm256_storeu_ps(los.as_mut_ptr(), lo);
    }
    let max = tail.iter().chain(&his).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let min = tail.iter().chain(&los).fold(f32::INFINITY, |m, &v| if v < m { v } else { m });
    (max, min)
}

/// Pass 2: `e_i = exp(x_i - max)` into `e`, each token's bucket into `buckets`, the sums of `e`
/// per `BLOCK` into `block_sums`, the estimate's sample (lane 0 of every other 8-token chunk:
/// tokens `STRIDE / 2` modulo `STRIDE`) into `sample`; returns `sum e_i` (f64).
///
/// # Safety
/// The CPU must support AVX2 and FMA; `e` and `buckets` are as long as `x`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp_and_buckets(
    x: &[f32],
    max: f32,
    scale: f32,
    e: &mut [f32],
    buckets: &mut [u16],
    block_sums: &mut Vec<f32>,
    sample: &mut [f32],
) -> f64 {
    const _: () = assert!(STRIDE == 16 && BLOCK.is_multiple_of(STRIDE));
    block_sums.clear();
    let n = x.len() / BLOCK * BLOCK;
    let (maxv, neg_scale, last) = (_mm256_set1_ps(max), _mm256_set1_ps(-scale), _mm256_set1_ps((BUCKETS - 1) as f32));
    let mut sum = 0.0f64;
    // f32 sums over one block (two chains, so the adds overlap), added to the f64 total per block:
    // f32 over 64 terms loses ~1e-7, f32 over the whole vocabulary would lose ~1e-5.
    for ((xb, eb), bb) in x[..n].chunks(BLOCK).zip(e[..n].chunks_mut(BLOCK)).zip(buckets[..n].chunks_mut(BLOCK)) {
        let mut acc = [_mm256_setzero_ps(); 2];
        // 16 tokens a step: two vectors of 8, whose buckets pack into one 16-lane store.
        for ((xc, ec), bc) in xb.chunks_exact(16).zip(eb.chunks_exact_mut(16)).zip(bb.chunks_exact_mut(16)) {
            // SAFETY: each chunk holds exactly 16 elements (two vectors of 8 floats, 256 bits of u16).
            let (v0, v1) = unsafe { (_mm256_loadu_ps(xc.as_ptr()), _mm256_loadu_ps(xc.as_ptr().add(8))) };
            let (d0, d1) = (_mm256_sub_ps(v0, maxv), _mm256_sub_ps(v1, maxv));
            let (e0, e1) = (exp8(d0), exp8(d1));
            // SAFETY: as above.
            unsafe {
                _mm256_storeu_ps(ec.as_mut_ptr(), e0);
                _mm256_storeu_ps(ec.as_mut_ptr().add(8), e1);
            }
            acc[0] = _mm256_add_ps(acc[0], e0);
            acc[1] = _mm256_add_ps(acc[1], e1);
            // (max - v) * scale, as `bucket_of`; minps returns its second operand (the last
            // bucket) for NaN; rounding to nearest keeps the bucket monotone in the logit.
            let q0 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_mul_ps(d0, neg_scale), last));
            let q1 = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_mul_ps(d1, neg_scale), last));
            // Buckets are at most 4095: packing to u16 loses nothing. packus interleaves the
            // 128-bit lanes (q0 low, q1 low, q0 high, q1 high); the permute restores token order.
            let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi32(q0, q1));
            // SAFETY: as above.
            unsafe { _mm256_storeu_si256(bc.as_mut_ptr().cast(), packed) };
            // The sample: the token at STRIDE / 2, lane 0 of the second vector.
            super::add_to_sample(sample, _mm256_cvtsi256_si32(q1) as u16, _mm256_cvtss_f32(e1));
        }
        let block = hsum(_mm256_add_ps(acc[0], acc[1]));
        block_sums.push(block);
        sum += f64::from(block);
    }
    if n < x.len() {
        let block = super::exp_and_buckets_scalar(&x[n..], max, scale, &mut e[n..], &mut buckets[n..], sample);
        block_sums.push(block);
        sum += f64::from(block);
    }
    sum
}

/// Temperature weights of the tokens at or above `cut` into `w` (0 elsewhere) and their sums per
/// `BLOCK` into `block_sums`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `w` is as long as `x`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn temperature_weights(
    x: &[f32],
    max: f32,
    inv_t: f32,
    cut: f32,
    w: &mut [f32],
    block_sums: &mut Vec<f32>,
) {
    block_sums.clear();
    let (maxv, inv_tv, cutv) = (_mm256_set1_ps(max), _mm256_set1_ps(inv_t), _mm256_set1_ps(cut));
    for (xb, wb) in x.chunks(BLOCK).zip(w.chunks_mut(BLOCK)) {
        if xb.len() < BLOCK {
            block_sums.push(super::temperature_weights_scalar(xb, max, inv_t, cut, wb));
            continue;
        }
        let mut acc = [_mm256_setzero_ps(); 2];
        for (j, (xc, wc)) in xb.chunks_exact(8).zip(wb.chunks_exact_mut(8)).enumerate() {
            // SAFETY: each chunk holds exactly 8 floats.
            let v = unsafe { _mm256_loadu_ps(xc.as_ptr()) };
            let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(v, cutv);
            let wv = _mm256_and_ps(exp8(_mm256_mul_ps(_mm256_sub_ps(v, maxv), inv_tv)), keep);
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(wc.as_mut_ptr(), wv) };
            acc[j & 1] = _mm256_add_ps(acc[j & 1], wv);
        }
        block_sums.push(hsum(_mm256_add_ps(acc[0], acc[1])));
    }
}

/// Appends to `out` the positions whose bucket is `bucket`: 16 compares at a time, a scalar look
/// only where one matched (a bucket holds a few hundred of 152k tokens).
///
/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn positions_in_bucket(buckets: &[u16], bucket: u16, out: &mut Vec<u32>) {
    let want = _mm256_set1_epi16(bucket as i16);
    let chunks = buckets.chunks_exact(16);
    let tail_start = buckets.len() - chunks.remainder().len();
    for (c, chunk) in chunks.enumerate() {
        // SAFETY: `chunk` holds exactly 16 u16.
        let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().cast()) };
        // Two mask bits per 16-bit lane: keep the even ones.
        let mut hits = _mm256_movemask_epi8(_mm256_cmpeq_epi16(v, want)) as u32 & 0x5555_5555;
        while hits != 0 {
            out.push((c * 16) as u32 + hits.trailing_zeros() / 2);
            hits &= hits - 1;
        }
    }
    for (i, &b) in buckets.iter().enumerate().skip(tail_start) {
        if b == bucket {
            out.push(i as u32);
        }
    }
}

/// For each 8-lane mask, the lanes to keep moved to the front (a permutation for
/// `_mm256_permutevar8x32_epi32`): the window's members are appended without a branch per token.
const COMPACT: [[u32; 8]; 256] = {
    let mut table = [[0u32; 8]; 256];
    let mut mask = 0;
    while mask < 256 {
        let (mut lane, mut kept) = (0, 0);
        while lane < 8 {
            if mask & (1 << lane) != 0 {
                table[mask][kept] = lane as u32;
                kept += 1;
            }
            lane += 1;
        }
        mask += 1;
    }
    table
};

/// `super::window_histogram`'s mass before the window (bucket below `from`) by a masked sum, f32
/// within a 64-token block and f64 across blocks as pass 2 sums the total, and its members
/// (unsigned `b - from <= to - from`), appended by a compacting permutation 8 lanes at a time,
/// 16 tokens a step.
///
/// # Safety
/// The CPU must support AVX2; `e` is as long as `buckets`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn window_masses(buckets: &[u16], e: &[f32], from: u16, to: u16, members: &mut Vec<u32>) -> f64 {
    let n = buckets.len() / BLOCK * BLOCK;
    // Room for a whole 8-lane store past the last member: at most `n` members are kept.
    members.clear();
    members.reserve(n + 8);
    let members_at = members.as_mut_ptr();
    let mut len = 0usize;
    // Buckets are at most 4095, so signed 16-bit compares are exact.
    let fromv = _mm256_set1_epi16(from as i16);
    let spanv = _mm256_set1_epi16(to.wrapping_sub(from) as i16);
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let mut before_window = 0.0f64;
    for (block, (bb, eb)) in buckets[..n].chunks(BLOCK).zip(e[..n].chunks(BLOCK)).enumerate() {
        let mut before = _mm256_setzero_ps();
        for (c, (bc, ec)) in bb.chunks_exact(16).zip(eb.chunks_exact(16)).enumerate() {
            // SAFETY: `bc` holds exactly 16 u16, `ec` 16 f32 (two loads of 8).
            let (v, lo, hi) = unsafe {
                (
                    _mm256_loadu_si256(bc.as_ptr().cast()),
                    _mm256_loadu_ps(ec.as_ptr()),
                    _mm256_loadu_ps(ec.as_ptr().add(8)),
                )
            };
            // 16-bit masks widened to two 8-lane 32-bit masks, for the f32 masses.
            let widen = |m: __m256i| {
                (
                    _mm256_cvtepi16_epi32(_mm256_castsi256_si128(m)),
                    _mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(m)),
                )
            };
            let (b_lo, b_hi) = widen(_mm256_cmpgt_epi16(fromv, v));
            let masked = |x: __m256, m: __m256i| _mm256_and_ps(x, _mm256_castsi256_ps(m));
            before = _mm256_add_ps(before, _mm256_add_ps(masked(lo, b_lo), masked(hi, b_hi)));
            let offset = _mm256_sub_epi16(v, fromv);
            let (in_lo, in_hi) = widen(_mm256_cmpeq_epi16(_mm256_min_epu16(offset, spanv), offset));
            let base = (block * BLOCK + c * 16) as i32;
            for (half, inside) in [(0, in_lo), (8, in_hi)] {
                let mask = _mm256_movemask_ps(_mm256_castsi256_ps(inside)) as usize;
                let ids = _mm256_add_epi32(lanes, _mm256_set1_epi32(base + half));
                // SAFETY: a table row is 8 u32; `len + 8` is within the reserved capacity since
                // `len <= n` (lanes written past `len` are overwritten, or cut by `set_len`).
                unsafe {
                    let order = _mm256_loadu_si256(COMPACT[mask].as_ptr().cast());
                    _mm256_storeu_si256(members_at.add(len).cast(), _mm256_permutevar8x32_epi32(ids, order));
                }
                len += mask.count_ones() as usize;
            }
        }
        before_window += f64::from(hsum(before));
    }
    // SAFETY: the first `len` entries were written above (plain integers).
    unsafe { members.set_len(len) };
    if n < buckets.len() {
        let mut tail = Vec::new();
        before_window +=
            super::window_masses_scalar(&buckets[n..], &e[n..], (u32::from(from), u32::from(to)), &mut tail);
        members.extend(tail.iter().map(|&i| i + n as u32));
    }
    before_window
}
