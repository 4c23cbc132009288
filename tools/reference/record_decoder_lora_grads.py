"""Records peft's LoRA gradients on the tiny random Llama of tools/reference/record_decoder.py,
for tests/decoder.rs: LoRA r = 4, alpha 8, no dropout, on q_proj and v_proj, its factors
set to seeded draws, the lettered loss (cross-entropy over the logits of answer tokens
5, 17, 3 and 39 at the last position, labels 1 and 2) on the recorded left-padded
batch, one backward pass. Writes tests/fixtures/decoder/llama/lora_grads.safetensors with
every factor and its gradient under the crate's var names
(`model.layers.{i}.self_attn.q_proj.lora_a`, ..., and `....grad`).

    .venv-ref/bin/python tools/reference/record_decoder_lora_grads.py
"""

import json
import pathlib

import peft
import torch
import transformers
from safetensors.torch import load_file, save_file

DIR = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "decoder" / "llama"
ANSWERS = [5, 17, 3, 39]
LABELS = [1, 2]


def main():
    model = transformers.LlamaForCausalLM.from_pretrained(DIR, dtype=torch.float32).eval()
    model.config._attn_implementation = "eager"
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = peft.get_peft_model(model, config)
    gen = torch.Generator().manual_seed(7)
    factors = {}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" not in name:
                continue
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
            # base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight
            ours = name.split("base_model.model.", 1)[1].replace(".lora_A.default.weight", ".lora_a")
            ours = ours.replace(".lora_B.default.weight", ".lora_b")
            factors[ours] = p
    batch = load_file(str(DIR / "expected.safetensors"))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss = torch.nn.functional.cross_entropy(logits[:, -1, ANSWERS], torch.tensor(LABELS))
    loss.backward()
    out = {}
    for name, p in factors.items():
        out[name] = p.detach().contiguous()
        out[name + ".grad"] = p.grad.detach().contiguous()
    out["loss"] = loss.detach().reshape(1)
    save_file(out, str(DIR / "lora_grads.safetensors"),
              metadata={"recorded_with": json.dumps({"peft": peft.__version__, "transformers": transformers.__version__})})
    print(f"loss {loss.item():.6f}, {len(factors)} factors")


if __name__ == "__main__":
    main()
