//! Whether this miner serves the model family that validators ask for.
//!
//! Each challenge carries a `model` hint (the validator's own model, e.g.
//! `Qwen/Qwen2.5-32B-Instruct`), and the running miner counts them by name in
//! `loosh_challenge_model_hints_total{model}`. The validator rewards the answers that cluster with
//! most others (×1.2 in the dominant cluster, SCORING.md): a model of another family writes in
//! another voice and falls outside more often. So `doctor` reads the counts from the running
//! miner's `/metrics` and compares the most frequent hint's family with the served model's.

use std::io::{BufReader, Read, Seek};
use std::path::Path;

/// The model family of a model name: the name's first word with its version, lower case, without
/// organisation or size — `qwen2.5` for `Qwen/Qwen2.5-32B-Instruct`, `llama3.1` for
/// `meta-llama/Meta-Llama-3.1-8B-Instruct`, `smollm2` for `SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn family(name: &str) -> String {
    let base = name.trim().rsplit('/').next().unwrap_or("").to_ascii_lowercase();
    let base = base.strip_suffix(".gguf").unwrap_or(&base);
    let mut words = base.split(['-', '_', ' ']).filter(|w| !w.is_empty() && *w != "meta");
    let Some(first) = words.next() else { return String::new() };
    // A quantisation suffix (`.q4_1`) is not part of the name.
    let first = first.split_once(".q").map_or(first, |(head, _)| head);
    let is_version = |w: &str| {
        w.trim_start_matches('v').chars().all(|c| c.is_ascii_digit() || c == '.')
            && w.chars().any(|c| c.is_ascii_digit())
    };
    match words.next() {
        Some(next) if first.chars().all(|c| c.is_ascii_alphabetic()) && is_version(next) => format!("{first}{next}"),
        _ => first.to_string(),
    }
}

/// The most frequent hint in a `/metrics` text (the `none` and `other` buckets aside), its count,
/// and the count of all hints.
pub fn top_hint(metrics: &str) -> Option<(String, u64, u64)> {
    let mut counts: Vec<(String, u64)> = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("loosh_challenge_model_hints_total{model=\"") else { continue };
        let Some((model, value)) = rest.split_once("\"} ") else { continue };
        let Ok(n) = value.trim().parse::<f64>() else { continue };
        counts.push((model.to_string(), n as u64));
    }
    let total = counts.iter().map(|(_, n)| n).sum();
    counts
        .into_iter()
        .filter(|(m, n)| *n > 0 && m != "none" && m != "other")
        .max_by_key(|(_, n)| *n)
        .map(|(m, n)| (m, n, total))
}

/// Longest string read from a GGUF header: a model's name is short, and a corrupt length must not
/// make `doctor` allocate gigabytes.
const MAX_GGUF_STRING: u64 = 1 << 20;
/// Most metadata entries looked at.
const MAX_GGUF_ENTRIES: u64 = 1 << 16;

/// The model's name from a GGUF file's metadata (`general.name`, else `general.basename`); only
/// the metadata is read, skipping the arrays (the tokenizer's vocabulary) without keeping them.
pub fn gguf_name(path: &Path) -> std::io::Result<Option<String>> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Ok(None);
    }
    let _version = read_u32(&mut r)?;
    let _tensors = read_u64(&mut r)?;
    let entries = read_u64(&mut r)?.min(MAX_GGUF_ENTRIES);
    let mut basename = None;
    for _ in 0..entries {
        let key = read_string(&mut r)?;
        let kind = read_u32(&mut r)?;
        match (key.as_str(), kind) {
            ("general.name", 8) => return Ok(Some(read_string(&mut r)?)),
            ("general.basename", 8) => basename = Some(read_string(&mut r)?),
            _ => skip_value(&mut r, kind)?,
        }
    }
    Ok(basename)
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_string(r: &mut impl Read) -> std::io::Result<String> {
    let len = read_u64(r)?;
    if len > MAX_GGUF_STRING {
        return Err(invalid("a GGUF string longer than 1 MiB"));
    }
    let mut b = vec![0u8; len as usize];
    r.read_exact(&mut b)?;
    Ok(String::from_utf8_lossy(&b).into_owned())
}

/// Skips one value of GGUF type `kind`.
fn skip_value<R: Read + Seek>(r: &mut BufReader<R>, kind: u32) -> std::io::Result<()> {
    let fixed = |kind: u32| match kind {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    };
    match kind {
        8 => {
            let len = read_u64(r)?;
            r.seek_relative(i64::try_from(len).map_err(|_| invalid("a GGUF string length"))?)
        }
        9 => {
            let item = read_u32(r)?;
            let count = read_u64(r)?;
            match fixed(item) {
                Some(size) => {
                    let bytes = count.checked_mul(size).and_then(|b| i64::try_from(b).ok());
                    r.seek_relative(bytes.ok_or_else(|| invalid("a GGUF array length"))?)
                }
                None if item == 8 => {
                    for _ in 0..count {
                        skip_value(r, 8)?;
                    }
                    Ok(())
                }
                None => Err(invalid("a GGUF array of arrays")),
            }
        }
        k => match fixed(k) {
            Some(size) => r.seek_relative(size as i64),
            None => Err(invalid("an unknown GGUF value type")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_drop_the_organisation_the_size_and_the_quantisation() {
        assert_eq!(family("Qwen/Qwen2.5-32B-Instruct"), "qwen2.5");
        assert_eq!(family("qwen2.5-32b-instruct"), "qwen2.5", "the metric's label form");
        assert_eq!(family("meta-llama/Meta-Llama-3.1-8B-Instruct"), "llama3.1");
        assert_eq!(family("Llama-3.1-8B-Instruct"), "llama3.1");
        assert_eq!(family("SmolLM2-135M-Instruct.Q4_1.gguf"), "smollm2");
        assert_eq!(family("mistral-7b-instruct-v0.3"), "mistral");
        assert_eq!(family("gemma-2-9b-it"), "gemma2");
        assert_ne!(family("Qwen/Qwen3-32B"), family("Qwen/Qwen2.5-32B-Instruct"));
        assert_eq!(family(""), "");
    }

    #[test]
    fn the_top_hint_is_read_from_the_metrics_text() {
        let text = "# HELP loosh_challenge_model_hints_total ...\n\
            loosh_challenge_model_hints_total{model=\"none\"} 9\n\
            loosh_challenge_model_hints_total{model=\"qwen2.5-32b-instruct\"} 5\n\
            loosh_challenge_model_hints_total{model=\"llama-3.1-8b-instruct\"} 2\n\
            loosh_challenges_total{outcome=\"ok\"} 16\n";
        assert_eq!(top_hint(text), Some(("qwen2.5-32b-instruct".into(), 5, 16)));
        assert_eq!(top_hint("loosh_challenge_model_hints_total{model=\"none\"} 3\n"), None);
    }
}
