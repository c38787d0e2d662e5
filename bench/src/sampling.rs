//! `loosh-bench sampling`: the cost of drawing one token with the validator's settings
//! (temperature 0.7, top_p 0.95), llama.cpp's chain against [`TokenSampler`], in the same run.
//!
//! The old path is what the engine did per token: a candidate array built from the logits, then
//! `top_p` → `temp` → `dist`. Logits are seeded Gaussians at the two vocabularies that matter
//! (SmolLM2's 49,152 and Qwen2.5's 151,936) and three spreads: sd 1.2 is flat like a
//! random-weight model, sd 3 is like a small trained model, sd 6 is peaked.

use std::time::{Duration, Instant};

use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;
use loosh_actors::inference::embedded::{backend, sampler_for};
use loosh_actors::inference::sampler::shapes::gaussian;
use loosh_actors::inference::sampler::TokenSampler;

const TEMPERATURE: f32 = 0.7;
const TOP_P: f32 = 0.95;
/// Different logit vectors cycled through, so no draw repeats the previous one's exact input.
const INPUTS: usize = 4;

pub fn sampling(draws: usize) -> anyhow::Result<()> {
    backend()?;
    let draws = draws.max(1);
    let old_draws = draws.div_ceil(4).max(1);
    println!(
        "sampling bench: temperature {TEMPERATURE}, top_p {TOP_P}; median per token over {draws} draws (old: {old_draws}), one core"
    );
    for vocab in [49_152usize, 151_936] {
        for sd in [1.2f32, 3.0, 6.0] {
            let inputs: Vec<Vec<f32>> = (0..INPUTS as u64).map(|s| gaussian(vocab, sd, s)).collect();

            let mut chain = sampler_for(TEMPERATURE, TOP_P);
            let old = median_us(old_draws, |i| {
                let logits = &inputs[i % INPUTS];
                let mut array = LlamaTokenDataArray::from_iter(
                    logits.iter().enumerate().map(|(t, &l)| LlamaTokenData::new(LlamaToken::new(t as i32), l, 0.0)),
                    false,
                );
                array.apply_sampler(&mut chain);
                array.selected_token().map_or(0, |t| t.0 as u32)
            });

            let mut sampler = TokenSampler::new(TEMPERATURE, TOP_P);
            let new = median_us(draws, |i| sampler.sample(&inputs[i % INPUTS]));

            let nucleus = TokenSampler::new(TEMPERATURE, TOP_P).distribution(&inputs[0]).len();
            println!("vocab {vocab} sd {sd:.1}: old {old:.0} us, new {new:.0} us (nucleus {nucleus} tokens)");
        }
    }
    Ok(())
}

/// Median wall time of `n` calls of `draw`, in microseconds, after one warm-up call.
fn median_us(n: usize, mut draw: impl FnMut(usize) -> u32) -> f64 {
    std::hint::black_box(draw(0));
    let mut times: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            std::hint::black_box(draw(i));
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2].as_secs_f64() * 1e6
}
