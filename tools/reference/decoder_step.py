"""transformers + peft's side of speed/examples/decoder_step.rs: the same SmolLM2 GGUF
(dequantized to f32 by transformers), the same batch (8 x 96 tokens, the same seeded ids
and left padding), LoRA r = 8, alpha 16, no dropout on q_proj and v_proj, the two answer
tokens' logits at the last position (`logits_to_keep=1`, so that transformers projects
the last position only, as ours does), cross-entropy, torch's AdamW; and a no-grad forward.
Prints one JSON line per measured step; `tools/decoder_paired.py` alternates it with ours.

    .venv-ref/bin/python tools/reference/decoder_step.py [STEPS] [THREADS]
"""

import json
import pathlib
import resource
import sys
import time

import peft
import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "assets" / "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH, TOKENS = 8, 96
ANSWERS = [330, 389]


def batch():
    """speed/examples/decoder_step.rs's xorshift ids, row i left-padded by 4 i."""
    state = 0x2545F4914F6CDD1D
    mask64 = (1 << 64) - 1
    ids, mask = [], []
    for row in range(BATCH):
        for t in range(TOKENS):
            real = t >= 4 * row
            if real:  # a draw for each real token only, as the Rust side
                state ^= (state << 13) & mask64
                state ^= state >> 7
                state ^= (state << 17) & mask64
            ids.append(100 + state % 49000 if real else 2)
            mask.append(int(real))
    return torch.tensor(ids).view(BATCH, TOKENS), torch.tensor(mask).view(BATCH, TOKENS)


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    torch.set_num_threads(int(sys.argv[2]) if len(sys.argv) > 2 else 2)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        MODEL_DIR, gguf_file=GGUF, dtype=torch.float32
    )
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids, mask = batch()
    labels = torch.arange(BATCH) % 2
    answers = torch.tensor(ANSWERS)

    def step():
        start = time.perf_counter()
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, answers]
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    def forward():
        start = time.perf_counter()
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, answers]
        return time.perf_counter() - start

    step()
    forward()
    for _ in range(steps):
        train, predict = step(), forward()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"impl": "torch", "step_s": round(train, 4),
                          "forward_s": round(predict, 4), "peak_rss_mb": round(peak)}), flush=True)


if __name__ == "__main__":
    main()
