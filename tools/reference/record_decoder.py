"""Records transformers' logits for tiny random Llama-family decoders, the fixtures of
tests/decoder.rs: for each architecture a directory under tests/fixtures/decoder/ with
the model as transformers saves it (config.json, model.safetensors: this also checks
that the crate reads HF safetensors) and expected.safetensors holding a left-padded batch
of token ids, its attention mask and the logits of every position.

    .venv-ref/bin/python tools/reference/record_decoder.py

The weights are redrawn at scales that give logits of order one (transformers'
initialiser gives near-zero ones, which would hide most bugs): matrices N(0, 1/fan_in),
RMSNorm weights 1 + N(0, 0.2^2), biases N(0, 0.1^2), embeddings N(0, 1).
"""

import json
import math
import pathlib

import torch
import transformers
from safetensors.torch import save_file

OUT = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "decoder"

SHAPE = dict(
    vocab_size=40,
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    hidden_act="silu",
)

MODELS = {
    # SmolLM2's family: tied embeddings, no biases, GQA.
    "llama": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        dict(rope_theta=100000.0, tie_word_embeddings=True, attention_bias=False),
    ),
    # Qwen2: biases on q, k and v, untied output matrix.
    "qwen2": (
        transformers.Qwen2Config,
        transformers.Qwen2ForCausalLM,
        dict(rope_theta=10000.0, tie_word_embeddings=False),
    ),
    # Qwen3: RMSNorm on each head's q and k, head_dim set apart from hidden / heads.
    "qwen3": (
        transformers.Qwen3Config,
        transformers.Qwen3ForCausalLM,
        dict(rope_theta=1000000.0, tie_word_embeddings=True, head_dim=16, attention_bias=False),
    ),
}


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def record(name, config_cls, model_cls, extra):
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    config = config_cls(**SHAPE, **extra)
    config._attn_implementation = "eager"
    model = model_cls(config).eval()
    randomise(model, gen)
    out = OUT / name
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)
    # Two sequences of 7 tokens, the second left-padded by 3 (pad id 0).
    ids = torch.randint(1, SHAPE["vocab_size"], (2, 7), generator=gen)
    mask = torch.ones_like(ids)
    ids[1, :3] = 0
    mask[1, :3] = 0
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    save_file(
        {
            "input_ids": ids.to(torch.int64).contiguous(),
            "attention_mask": mask.to(torch.int64).contiguous(),
            "logits": logits.contiguous(),
        },
        str(out / "expected.safetensors"),
        metadata={
            "recorded_with": json.dumps(
                {"transformers": transformers.__version__, "torch": torch.__version__}
            )
        },
    )
    print(f"{out}: logits {tuple(logits.shape)}, max |logit| {logits.abs().max():.3f}")


if __name__ == "__main__":
    for name, (config_cls, model_cls, extra) in MODELS.items():
        record(name, config_cls, model_cls, extra)
