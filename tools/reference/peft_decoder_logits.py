"""Python's peft on a decoder adapter file that varlora wrote: transformers'
`LlamaForCausalLM` (the tiny model of tests/fixtures/decoder/llama) with the adapter loaded
by `PeftModel.from_pretrained`, and its logits on the fixture's inputs, for
`tests/peft_reference.rs`.

    cargo test --test peft_reference -- --ignored record_decoder   # writes the adapter
    .venv-ref/bin/python tools/reference/peft_decoder_logits.py   # adds peft_logits.safetensors
"""

from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

BASE = Path("tests/fixtures/decoder/llama")
OUT = Path("tests/fixtures/peft/decoder")


def main():
    model = LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(OUT / "adapter"))
    model.eval()
    n_lora = sum(1 for name, _ in model.named_modules() if name.endswith(".lora_A"))
    if n_lora == 0:
        raise SystemExit("peft applied no LoRA module")
    ins = load_file(str(BASE / "expected.safetensors"))
    with torch.no_grad():
        logits = model(
            input_ids=ins["input_ids"].to(torch.int64),
            attention_mask=ins["attention_mask"].to(torch.int64),
        ).logits
    save_file({"logits": logits.contiguous()}, str(OUT / "peft_logits.safetensors"))
    print(f"{n_lora} LoRA modules; logits {tuple(logits.shape)}")


if __name__ == "__main__":
    main()
