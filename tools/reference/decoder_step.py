"""transformers + peft's side of speed/examples/decoder_step.rs: the same SmolLM2 GGUF
(dequantized to f32 by transformers), the same batch (8 x 96 tokens, the same seeded ids
and left padding), LoRA r = 8, alpha 16, no dropout on q_proj and v_proj, the two answer
tokens' logits at the last position (`logits_to_keep=1`, so that transformers projects
the last position only, as ours does), cross-entropy, torch's AdamW; and a no-grad forward.
With `--cloze`, the cloze head's step instead: 4 questions of 4 choices (16 sequences of
64 tokens, the same seeded ids and padding), each choice's summed token log-likelihood
as its logit, the output matrix applied only at the positions that predict a choice
token, as ours does. Prints one JSON line per measured step; `tools/decoder_paired.py`
alternates it with ours.

    .venv-ref/bin/python tools/reference/decoder_step.py [STEPS] [THREADS] [--cloze]
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


def seeded_rows(rows, tokens, pad):
    """speed/examples/decoder_step.rs's xorshift ids, row r left-padded by pad(r)."""
    state = 0x2545F4914F6CDD1D
    mask64 = (1 << 64) - 1
    ids, mask = [], []
    for row in range(rows):
        for t in range(tokens):
            real = t >= pad(row)
            if real:  # a draw for each real token only, as the Rust side
                state ^= (state << 13) & mask64
                state ^= state >> 7
                state ^= (state << 17) & mask64
            ids.append(100 + state % 49000 if real else 2)
            mask.append(int(real))
    return torch.tensor(ids).view(rows, tokens), torch.tensor(mask).view(rows, tokens)


def batch():
    return seeded_rows(BATCH, TOKENS, lambda row: 4 * row)


def cloze_step(model, opt):
    """The cloze head's training step on the Rust side's cloze batch."""
    ids, mask = seeded_rows(16, 64, lambda row: (3 * row) % 12)
    choice_lens = [1 + r % 6 for r in range(16)]
    # Position p predicts token p + 1: the rows before each choice token.
    rows = [(r, p - 1) for r, k in enumerate(choice_lens) for p in range(64 - k, 64)]
    row_idx = torch.tensor([r for r, _ in rows])
    pos_idx = torch.tensor([p for _, p in rows])
    targets = ids[row_idx, pos_idx + 1]
    labels = torch.arange(4)
    decoder, lm_head = model.base_model.model.model, model.base_model.model.lm_head

    def step():
        start = time.perf_counter()
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        log_probs = torch.log_softmax(lm_head(hidden[row_idx, pos_idx]), -1)
        picked = log_probs.gather(1, targets.unsqueeze(1)).squeeze(1)
        sums = torch.stack([s.sum() for s in picked.split(choice_lens)])
        loss = torch.nn.functional.cross_entropy(sums.view(4, 4), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    return step


def main():
    args = [a for a in sys.argv[1:] if a != "--cloze"]
    steps = int(args[0]) if args else 5
    torch.set_num_threads(int(args[1]) if len(args) > 1 else 2)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        MODEL_DIR, gguf_file=GGUF, dtype=torch.float32
    )
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, config)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    if "--cloze" in sys.argv:
        step = cloze_step(model, opt)
        step()
        for _ in range(steps):
            train = step()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(json.dumps({"impl": "torch", "cloze_step_s": round(train, 4),
                              "peak_rss_mb": round(peak)}), flush=True)
        return
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
