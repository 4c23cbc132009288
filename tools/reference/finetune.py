"""The PyTorch reference for `benchmark/examples/finetune`: the same LoRA fine-tune of
all-MiniLM-L6-v2 on Pang & Lee sentence polarity, with torch's AdamW or ivon-opt's IVON,
on the split that the Rust run wrote.

Run the Rust example first (it writes `split-seed<N>.json` into its `--out` folder), then

    .venv-ref/bin/python tools/reference/finetune.py --optimizer ivon --seed 0 \
        --split results/test/ivon/split-seed0.json --out results/reference

with the virtual environment of tools/reference (torch 2.11.0, ivon-opt 0.1.3,
transformers, peft). Everything is loaded from `assets/` (scripts/fetch-assets.sh); no
network is needed. The model, the tokenisation, the hyperparameters and the metrics'
conventions (../shared/spec/metrics.md) are those of the Rust example; the adapters' init,
the dropout masks and the batch order come from torch's generator instead.
"""

import argparse
import csv
import json
import math
import resource
import time
from pathlib import Path

import ivon
import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer
from transformers import BertConfig, BertModel


def read_corpus(path):
    """(text, label) rows of a `"label","text"` CSV, labels 1 / -1 -> 1 / 0."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [(text, int(label == "1")) for label, text, *_ in csv.reader(f)]


def read_multiemo(corpora):
    """MultiEmo's English hotel and medicine review sentences (as the Rust example reads
    them, in that order), if `scripts/fetch-assets.sh --multiemo` fetched them."""
    sentences = []
    for domain in ("hotels", "medicine"):
        task = json.loads((corpora / "multiemo" / f"{domain}_sentence_en.json").read_text())
        sentences += [(e["input"], 0) for e in task["examples"]]
    return sentences


class Classifier(torch.nn.Module):
    """MiniLM with LoRA on query and value, mean pooling and a linear head."""

    def __init__(self, model_dir, dropout):
        super().__init__()
        config = BertConfig.from_pretrained(model_dir)
        # The Rust encoder has no dropout of its own; only the adapters drop out.
        config.hidden_dropout_prob = 0.0
        config.attention_probs_dropout_prob = 0.0
        bert = BertModel.from_pretrained(model_dir, config=config, add_pooling_layer=False)
        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=["query", "value"])
        self.encoder = get_peft_model(bert, lora)
        self.head = torch.nn.Linear(config.hidden_size, 2)

    def forward(self, ids, types, mask):
        hidden = self.encoder(input_ids=ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return self.head(pooled)


def batches(tokenizer, rows, size):
    out = []
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        enc = tokenizer.encode_batch([t for t, _ in chunk])
        out.append(
            (
                torch.tensor([e.ids for e in enc]),
                torch.tensor([e.type_ids for e in enc]),
                torch.tensor([e.attention_mask for e in enc]),
                torch.tensor([y for _, y in chunk]),
            )
        )
    return out


def entropy(p):
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


def predictive(logits):
    """Predictive of S logit samples (S, N, C): log p_bar, p_bar, TU, AU, MI."""
    log_probs = torch.logsumexp(F.log_softmax(logits, -1), 0) - math.log(logits.shape[0])
    probs = log_probs.exp()
    total = entropy(probs)
    aleatoric = entropy(F.softmax(logits, -1)).mean(0)
    return log_probs, probs, total, aleatoric, (total - aleatoric).clamp(min=0)


def ece(probs, y, bins=15):
    conf, pred = probs.max(-1)
    correct = (pred == y).double()
    idx = (conf.double() * bins).floor().long().clamp(max=bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        n = int(sel.sum())
        if n:
            total += n / len(y) * abs(float(correct[sel].mean()) - float(conf[sel].double().mean()))
    return total


def auroc(ind, ood):
    """P(ood score > in-distribution score), ties counted half (as sklearn)."""
    ind, ood = np.asarray(ind, dtype=np.float64), np.asarray(ood, dtype=np.float64)
    greater = (ood[:, None] > ind[None, :]).sum()
    ties = (ood[:, None] == ind[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(ind) * len(ood)))


def metrics(name, ind, oods, y):
    """The metrics on `ind`, with AUROCs against each OOD set of `oods` ({name: predictive};
    keys auroc_msp etc. for "wiki", auroc_msp_multiemo etc. for "multiemo")."""
    log_probs, probs, total, _, mi = ind
    onehot = F.one_hot(y, 2).to(probs.dtype)
    r = {
        "model": name,
        "accuracy": float((probs.argmax(-1) == y).double().mean()),
        "nll": float(-log_probs.gather(1, y[:, None]).double().mean()),
        "ece": ece(probs, y),
        "brier": float(((probs - onehot) ** 2).sum(-1).double().mean()),
    }
    for set_name, (_, ood_probs, ood_total, _, ood_mi) in oods.items():
        suffix = "" if set_name == "wiki" else f"_{set_name}"
        r["auroc_msp" + suffix] = auroc(1 - probs.max(-1).values, 1 - ood_probs.max(-1).values)
        r["auroc_entropy" + suffix] = auroc(total, ood_total)
        r["auroc_mi" + suffix] = auroc(mi, ood_mi)
    return r


@torch.no_grad()
def evaluate(model, data, samples, optimizer=None):
    """Logits (S, N, C): at the current weights (samples 0) or at `samples` IVON draws."""
    model.eval()
    if samples == 0:
        return torch.cat([model(*b[:3]) for b in data])[None]
    draws = []
    for _ in range(samples):
        with optimizer.sampled_params():
            draws.append(torch.cat([model(*b[:3]) for b in data]))
    return torch.stack(draws)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--optimizer", choices=["adamw", "ivon"], default="adamw")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--test-samples", type=int, default=10)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--hess-init", type=float, default=3e-4)
    ap.add_argument("--ess", type=float, default=1e7)
    ap.add_argument("--clip-radius", type=float, default=0.02)
    ap.add_argument("--beta2", type=float, default=0.99999)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--constant-lr", action="store_true")
    ap.add_argument("--assets", type=Path, default=Path("assets"))
    ap.add_argument("--out", type=Path, default=Path("results/reference"))
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    model_dir = args.assets / "all-minilm-l6-v2"
    polarity = read_corpus(args.assets / "corpora" / "polarity-en-pang&lee2.csv")
    wiki = read_corpus(args.assets / "corpora" / "uncertainty-conll2010.csv")
    split = json.loads(args.split.read_text())
    if (len(polarity), len(wiki)) != (split["polarity_rows"], split["wiki_rows"]):
        raise SystemExit("the corpora do not have the rows that the split was drawn from")
    train = [polarity[i] for i in split["train"]]
    ind = [polarity[i] for i in split["eval"]]
    ood = [wiki[i] for i in split["ood"]]
    ood_sets = {"wiki": ood}
    if split.get("ood_multiemo"):
        multiemo = read_multiemo(args.assets / "corpora")
        ood_sets["multiemo"] = [multiemo[i] for i in split["ood_multiemo"]]

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(args.max_tokens)
    tokenizer.enable_padding()
    ind_batches = batches(tokenizer, ind, 64)
    ood_batches = {name: batches(tokenizer, rows, 64) for name, rows in ood_sets.items()}
    y = torch.cat([b[3] for b in ind_batches])

    model = Classifier(model_dir, args.dropout)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = len(train) // args.batch
    total = steps_per_epoch * args.epochs
    if args.optimizer == "ivon":
        lr = args.lr if args.lr is not None else 0.03
        opt = ivon.IVON(
            params,
            lr=lr,
            ess=args.ess,
            hess_init=args.hess_init,
            beta2=args.beta2,
            weight_decay=0.0,
            clip_radius=args.clip_radius,
            rescale_lr=False,
        )
    else:
        lr = args.lr if args.lr is not None else 5e-4
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 1.0 if args.constant_lr else 1.0 - step / total
    )

    start = time.perf_counter()
    step = 0
    for epoch in range(args.epochs):
        order = torch.randperm(len(train)).tolist()
        rows = [train[i] for i in order[: steps_per_epoch * args.batch]]
        for ids, types, mask, labels in batches(tokenizer, rows, args.batch):
            model.train()
            if args.optimizer == "ivon":
                with opt.sampled_params(train=True):
                    opt.zero_grad()
                    loss = F.cross_entropy(model(ids, types, mask), labels)
                    loss.backward()
            else:
                opt.zero_grad()
                loss = F.cross_entropy(model(ids, types, mask), labels)
                loss.backward()
            opt.step()
            schedule.step()
            step += 1
            if step % 10 == 0:
                rate = step / (time.perf_counter() - start)
                print(f"epoch {epoch + 1} step {step}/{total} loss {loss.item():.4f} {rate:.2f} steps/s", flush=True)
    train_secs = time.perf_counter() - start

    ms_per_step = 1e3 * train_secs / max(total, 1)

    def row(name, samples, optimizer=None):
        start = time.perf_counter()
        ind_logits = evaluate(model, ind_batches, samples, optimizer)
        ms_per_sentence = 1e3 * (time.perf_counter() - start) / len(ind)
        oods = {
            set_name: predictive(evaluate(model, b, samples, optimizer))
            for set_name, b in ood_batches.items()
        }
        r = metrics(name, predictive(ind_logits), oods, y)
        r.update(ms_per_step=ms_per_step, ms_per_sentence=ms_per_sentence)
        return r

    if args.optimizer == "ivon":
        rows = [row("IVON @ mean", 0), row(f"IVON {args.test_samples} samples", args.test_samples, opt)]
    else:
        rows = [row("AdamW", 0)]

    summary = {
        "implementation": f"torch {torch.__version__}, ivon-opt, peft",
        "optimizer": args.optimizer,
        "seed": args.seed,
        "epochs": args.epochs,
        "split": str(args.split),
        "train_sentences": len(train),
        "eval_sentences": len(ind),
        "ood_sentences": len(ood),
        "ood_multiemo_sentences": len(ood_sets.get("multiemo", [])) or None,
        "threads": torch.get_num_threads(),
        "ms_per_step": ms_per_step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.optimizer}-seed{args.seed}"
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    for r in rows:
        print(
            f"| torch {r['model']} | {100 * r['accuracy']:.2f}% | {r['nll']:.4f} | {r['ece']:.4f} | "
            f"{r['brier']:.4f} | {r['auroc_msp']:.3f} | {r['auroc_entropy']:.3f} | {r['auroc_mi']:.3f} | "
            f"{r['ms_per_step']:.0f} | {r['ms_per_sentence']:.2f} |"
        )


if __name__ == "__main__":
    main()
