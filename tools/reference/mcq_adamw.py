"""transformers + peft's side of the decoder's multiple-choice benchmark, for one task and
seed: SmolLM2-135M-Instruct from the same GGUF (dequantized to f32), LoRA r = 8, alpha 16
on q_proj and v_proj, AdamW with BLoB's 6% linear warm-up then linear decay, trained on
the committed split (benchmark/data/mcq/splits) with cloze scoring and the prompts of
benchmark/examples/mcq/prompt.rs, then evaluated on the validation or test split:
accuracy, NLL and 15-bin ECE beside ours, and the time per step.

    .venv-ref/bin/python tools/reference/mcq_adamw.py --task piqa --seed 0 [--lr 1e-4] [--mean]

`--mean` scores each choice by its mean token log-likelihood (mcq's `cloze-mean`).

Cloze only, and the question forms PIQA, ARC, OpenBookQA and WinoGrande use; the batch
order is its own seeded shuffle (not the Rust side's), so agreement is statistical.
"""

import argparse
import json
import pathlib
import random
import time
import zlib

import peft
import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[2]
GGUF_DIR = ROOT / "assets" / "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def question(set_name, row):
    """(rows of (context, continuation), answer), as prompt.rs lays them out."""
    if set_name == "piqa":
        prompt = f"Question: {row['goal']}\nAnswer:"
        return [(prompt, " " + row["sol1"]), (prompt, " " + row["sol2"])], int(row["label"])
    if set_name in ("arc_easy", "arc_challenge", "openbookqa"):
        text = row["question_stem"] if set_name == "openbookqa" else row["question"]
        prompt = f"Question: {text}\nAnswer:"
        labels = row["choices"]["label"]
        return [(prompt, " " + c) for c in row["choices"]["text"]], labels.index(row["answerKey"])
    if set_name == "winogrande":
        before, after = row["sentence"].split("_", 1)
        rest = " " + after.strip()
        return [(before + row["option1"], rest), (before + row["option2"], rest)], int(row["answer"]) - 1
    raise SystemExit(f"{set_name}: not a form this reference lays out")


def load(task, part):
    spec = json.loads((ROOT / "benchmark/data/mcq/splits" / f"{task}.json").read_text())
    lines = {}
    out = []
    for set_name, row, crc in spec[part]:
        if set_name not in lines:
            lines[set_name] = (ROOT / "assets/mcq" / f"{set_name}.jsonl").read_bytes().split(b"\n")
        line = lines[set_name][row]
        if zlib.crc32(line) != crc:
            raise SystemExit(f"{set_name} row {row}: CRC-32 differs from the split's")
        out.append(question(set_name, json.loads(line)))
    return out


def cloze_logits(model, tok, qs, max_len, mean=False):
    """(questions, choices) summed log-likelihoods of each choice's tokens."""
    width = max(len(rows) for rows, _ in qs)
    seqs, lens = [], []
    for rows, _ in qs:
        rows = rows + [rows[-1]] * (width - len(rows))
        for ctx, cont in rows:
            head = tok(ctx, add_special_tokens=False).input_ids
            full = tok(ctx + cont, add_special_tokens=False).input_ids
            seqs.append(full[-max_len:])
            lens.append(len(full) - len(head))
    length = max(len(s) for s in seqs)
    ids = torch.tensor([[0] * (length - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (length - len(s)) + [1] * len(s) for s in seqs])
    hidden = model.base_model.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    rows, pos = [], []
    for r, k in enumerate(lens):
        for p in range(length - k, length):
            rows.append(r)
            pos.append(p - 1)
    rows, pos = torch.tensor(rows), torch.tensor(pos)
    logp = torch.log_softmax(model.base_model.model.lm_head(hidden[rows, pos]), -1)
    picked = logp.gather(1, ids[rows, pos + 1].unsqueeze(1)).squeeze(1)
    sums = torch.stack([s.sum() for s in picked.split(lens)])
    if mean:
        sums = sums / torch.tensor(lens, dtype=sums.dtype)
    sums = sums.view(len(qs), width)
    absent = torch.tensor([[0.0 if c < len(r) else -1e4 for c in range(width)] for r, _ in qs])
    return sums + absent


def ece(probs, labels, bins=15):
    """Top-label ECE with equal-width bins [lo, hi), the last one closed, as varlora's."""
    conf, pred = probs.max(1)
    right = (pred == labels).double()
    which = (conf * bins).long().clamp(max=bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.double().mean() * (conf[inside].double().mean() - right[inside].mean()).abs()
    return float(total)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="piqa")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--eval", default="validation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mean", action="store_true")
    p.add_argument("--limit", type=int, help="evaluate the first N questions only")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    tok = transformers.AutoTokenizer.from_pretrained(GGUF_DIR, gguf_file=GGUF)
    model = transformers.AutoModelForCausalLM.from_pretrained(GGUF_DIR, gguf_file=GGUF, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, config)
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=a.lr, weight_decay=0.0)
    warm = max(1, int(0.06 * a.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (a.steps - s) / (a.steps - warm)))
    train, evaluated = load(a.task, "train"), load(a.task, a.eval)[:a.limit]
    rng = random.Random(a.seed)
    order, losses, start = [], [], time.perf_counter()
    for step in range(a.steps):
        if len(order) < a.batch:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order += fresh
        qs = [train[i] for i in order[:a.batch]]
        del order[:a.batch]
        logits = cloze_logits(model, tok, qs, a.max_len, a.mean)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([y for _, y in qs]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    ms_per_step = 1e3 * (time.perf_counter() - start) / a.steps
    model.eval()
    with torch.no_grad():
        logits = torch.cat([cloze_logits(model, tok, evaluated[i:i + 8], a.max_len, a.mean)
                            for i in range(0, len(evaluated), 8)])
    labels = torch.tensor([y for _, y in evaluated])
    logp = torch.log_softmax(logits.double(), -1)
    out = {
        "impl": "transformers + peft", "task": a.task, "seed": a.seed, "lr": a.lr,
        "scoring": "cloze-mean" if a.mean else "cloze",
        "steps": a.steps, "batch": a.batch, "split": a.eval, "questions": len(evaluated),
        "accuracy": float((logp.argmax(1) == labels).double().mean()),
        "nll": float(-logp[torch.arange(len(labels)), labels].mean()),
        "ece": ece(logp.exp(), labels), "ms_per_step": ms_per_step, "train_loss": losses,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
