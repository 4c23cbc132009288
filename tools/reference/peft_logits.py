"""Python's peft on an adapter file that varlora wrote: the logits it computes, for
`tests/peft_reference.rs`.

    cargo test --test peft_reference -- --ignored       # base model, inputs, adapter
    .venv-ref/bin/python tools/reference/peft_logits.py  # adds peft_logits.safetensors

With `--model DIR --adapter DIR --sentences FILE --predictions FILE`, it instead runs a
real model (e.g. assets/all-minilm-l6-v2 with what `finetune --save` wrote) on the
sentences, one per line, and prints the largest difference between its probabilities and
those `examples/predict --adapter` wrote for the same lines (JSON Lines, `probs`).

The encoder is transformers' `BertModel` with peft's LoRA loaded by
`PeftModel.from_pretrained`. peft's `BertModel` has no classification head; the file's
`modules_to_save` head is applied as varlora's `BertClassifier` applies it, to the
attention-masked mean of the last hidden state.
"""

import argparse
import json
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

HEAD = "base_model.model.classifier."


def peft_encoder(config, weights, adapter):
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict(weights, strict=True)
    model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    n_lora = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    if n_lora == 0:
        raise SystemExit(f"peft applied no LoRA module from {adapter}")
    return model, n_lora


def logits(model, head, ids, types, mask):
    with torch.no_grad():
        hidden = model(
            input_ids=ids, token_type_ids=types, attention_mask=mask
        ).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1)
    return pooled @ head["weight"].T + head["bias"]


def head_of(adapter):
    tensors = load_file(str(Path(adapter) / "adapter_model.safetensors"))
    return {k[len(HEAD):]: v for k, v in tensors.items() if k.startswith(HEAD)}


def fixture(dir):
    config = BertConfig(**json.loads((dir / "config.json").read_text()))
    weights = load_file(str(dir / "base.safetensors"))
    model, n_lora = peft_encoder(config, weights, dir / "adapter")
    ins = {k: v.to(torch.int64) for k, v in load_file(str(dir / "inputs.safetensors")).items()}
    out = logits(
        model,
        head_of(dir / "adapter"),
        ins["input_ids"],
        ins["token_type_ids"],
        ins["attention_mask"],
    )
    save_file({"logits": out.contiguous()}, str(dir / "peft_logits.safetensors"))
    print(f"{n_lora} LoRA modules; logits {out.tolist()}")


def real(model_dir, adapter, sentences, predictions, max_tokens):
    from tokenizers import Tokenizer

    config = BertConfig.from_pretrained(model_dir)
    weights = load_file(str(Path(model_dir) / "model.safetensors"))
    weights = {
        k.removeprefix("bert."): v
        for k, v in weights.items()
        if "pooler" not in k and not k.endswith("position_ids")
    }
    model, _ = peft_encoder(config, weights, adapter)
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.enable_truncation(max_tokens)
    tok.no_padding()  # MiniLM's tokenizer.json pads to 128
    head = head_of(adapter)
    theirs = []
    for line in Path(sentences).read_text().splitlines():
        enc = tok.encode(line)
        ids, types, mask = (
            torch.tensor([x]) for x in (enc.ids, enc.type_ids, enc.attention_mask)
        )
        theirs.append(torch.softmax(logits(model, head, ids, types, mask)[0], -1))
    ours = [json.loads(line)["probs"] for line in Path(predictions).read_text().splitlines()]
    if len(ours) != len(theirs):
        raise SystemExit(f"{len(ours)} predictions for {len(theirs)} sentences")
    diff = max((torch.tensor(o) - t).abs().max().item() for o, t in zip(ours, theirs))
    print(f"{len(ours)} sentences; largest difference in probability {diff:.2e}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fixture", default="tests/fixtures/peft")
    p.add_argument("--model")
    p.add_argument("--adapter")
    p.add_argument("--sentences")
    p.add_argument("--predictions")
    p.add_argument("--max-tokens", type=int, default=64)
    a = p.parse_args()
    if a.model:
        real(a.model, a.adapter, a.sentences, a.predictions, a.max_tokens)
    else:
        fixture(Path(a.fixture))


if __name__ == "__main__":
    main()
