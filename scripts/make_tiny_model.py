#!/usr/bin/env python3
"""Makes the tests' tiny model: a 2-layer, 64-wide llama with random weights (fixed seed) and the
real tokenizer and chat template of SmolLM2, copied from SmolLM2's own GGUF.

Why: the pipeline tests (loading, templating, sampling, stop conditions, deadlines, restarts) need a
model that loads in a fraction of a second and generates ~1,000 tokens/s on one thread; what it
says does not matter, but its tokenization and chat template must be real. Making it from the model
that install.sh already downloads keeps the suite free of any other download.

usage: make_tiny_model.py SMOLLM2.gguf OUT.gguf
"""
import sys

import gguf
import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

N_EMBD, N_LAYER, N_FF, N_HEAD, N_HEAD_KV = 64, 2, 128, 4, 2
HEAD_DIM = N_EMBD // N_HEAD


def main(src: str, out: str) -> None:
    reader = GGUFReader(src)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)

    w = GGUFWriter(out, "llama")
    w.add_name("tiny-random-llama")
    w.add_block_count(N_LAYER)
    w.add_context_length(4096)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    # The tokenizer and chat template, verbatim.
    for key, field in reader.fields.items():
        if key.startswith("tokenizer."):
            vtype = field.types[0]
            sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
            w.add_key_value(key, field.contents(), vtype, sub)

    rng = np.random.default_rng(1234)

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    w.add_tensor("token_embd.weight", mat(n_vocab, N_EMBD))
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "attn_q.weight", mat(N_HEAD * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_k.weight", mat(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_v.weight", mat(N_HEAD_KV * HEAD_DIM, N_EMBD))
        w.add_tensor(p + "attn_output.weight", mat(N_EMBD, N_HEAD * HEAD_DIM))
        w.add_tensor(p + "ffn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "ffn_gate.weight", mat(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", mat(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", mat(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", ones(N_EMBD))
    # No output.weight: llama.cpp ties the output to token_embd.

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
