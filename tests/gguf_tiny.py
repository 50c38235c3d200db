"""Write a tiny random-weight LLaMA GGUF that llama.cpp loads in milliseconds (test helper).

The vocabulary is SentencePiece-style ("llama" tokenizer model): <unk>, <s>, </s> and the
256 byte tokens <0x00>..<0xFF>, so any text tokenizes through byte fallback. The output
projection is zero for every token but printable ASCII, so greedy decoding emits readable
single-byte text and never ends early on </s> (a zero logit loses to the best random one).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
N_CTX = 2048
SPECIALS = ("<unk>", "<s>", "</s>")
N_VOCAB = len(SPECIALS) + 256

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _vocab() -> tuple[list[bytes], list[float], list[int]]:
    tokens = [s.encode() for s in SPECIALS]
    types = [int(gguf.TokenType.UNKNOWN), int(gguf.TokenType.CONTROL), int(gguf.TokenType.CONTROL)]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>".encode())
        types.append(int(gguf.TokenType.BYTE))
    return tokens, [0.0] * len(tokens), types


def write_tiny_gguf(
    path: Path,
    *,
    arch: str = "llama",
    chat_template: str | None = CHAT_TEMPLATE,
    seed: int = 0,
    emit: bytes | None = None,
) -> Path:
    """Write the model to `path`; `arch` other than "llama" makes a file llama.cpp rejects.

    `emit`: the only bytes greedy decoding may produce (default: printable ASCII)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-test")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(N_VOCAB)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    tokens, scores, types = _vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    # numpy shapes are the reverse of ggml's ne[]: (rows = output dim, cols = input dim).
    w.add_tensor("token_embd.weight", rand(N_VOCAB, N_EMBD))
    for i in range(N_LAYER):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", rand(N_EMBD, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(N_FF, N_EMBD))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    out = rand(N_VOCAB, N_EMBD)
    allowed = np.zeros(N_VOCAB, dtype=bool)
    if emit is None:
        allowed[len(SPECIALS) + 0x20 : len(SPECIALS) + 0x7F] = True
    else:
        ids = [len(SPECIALS) + b for b in emit]
        for first, second in zip(ids[0::2], ids[1::2], strict=False):
            out[second] = -out[first]  # one of a pair always beats the zero rows
        allowed[ids] = True
    out[~allowed] = 0.0
    w.add_tensor("output.weight", out)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
