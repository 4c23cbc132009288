"""Records transformers' last-position logits of the real SmolLM2-135M-Instruct, loaded
from the same Q4_1 GGUF that `scripts/fetch-assets.sh --llm` fetches (transformers
dequantizes it, as the crate does), for tests/decoder_smollm2.rs:
tests/fixtures/decoder/smollm2/expected.safetensors holds the prompts' token ids
left-padded into one batch, its attention mask, and each prompt's logits at its last
token, computed one prompt at a time without padding.

    bash scripts/fetch-assets.sh --llm
    .venv-ref/bin/python tools/reference/record_smollm2.py
"""

import json
import pathlib

import torch
import transformers
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "assets" / "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests" / "fixtures" / "decoder" / "smollm2"

PROMPTS = [
    "The capital of France is",
    "Question: How far is the Moon, 384,400 km, in miles?\nAnswer:",
    "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n",
]


def main():
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        MODEL_DIR, gguf_file=GGUF, dtype=torch.float32
    ).eval()
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    with torch.no_grad():
        last = torch.stack([model(torch.tensor([i])).logits[0, -1] for i in ids]).float()
    width = max(map(len, ids))
    pad = 2  # the file's padding id
    padded = torch.tensor([[pad] * (width - len(i)) + i for i in ids], dtype=torch.int64)
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], dtype=torch.int64)
    OUT.mkdir(parents=True, exist_ok=True)
    save_file(
        {"input_ids": padded, "attention_mask": mask, "last_logits": last.contiguous()},
        str(OUT / "expected.safetensors"),
        metadata={
            "recorded_with": json.dumps(
                {"transformers": transformers.__version__, "torch": torch.__version__}
            ),
            "prompts": json.dumps(PROMPTS),
        },
    )
    for p, i, row in zip(PROMPTS, ids, last):
        print(f"{len(i):3} tokens, top token {int(row.argmax())}: {p!r}")


if __name__ == "__main__":
    main()
