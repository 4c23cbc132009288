"""Records how a tiny byte-level BPE splits a list of strings under Qwen2's and Llama 3's
pre-tokenizers (`tokenizer.ggml.pre` = `qwen2`, `llama-bpe`), for tests/decoder.rs. No
real Qwen2 or Llama 3 GGUF is reachable offline, so this writes two small GGUF files
(tests/fixtures/decoder/pretokenizers/{qwen2,llama-bpe}.gguf) whose tokenizer is GPT-2's
256 byte symbols plus a few merges (among them "123", "000" and upper-case contractions,
where the two splits and SmolLM2's differ), and records their ids two ways:
- transformers' tokenizer loaded from each file (transformers 5 reads
  `tokenizer.ggml.pre` and sets the model's split);
- the Python `tokenizers` package built from the same vocabulary and merges with the
  split expression of transformers' GGUF mapping, then byte-level encoding.
Writes tests/fixtures/decoder/pretokenizers/expected.json.

    .venv-ref/bin/python tools/reference/record_gguf_pretokenizers.py
"""

import json
import pathlib

import gguf
import numpy as np
import tokenizers
import transformers
from tokenizers import Regex, models, pre_tokenizers
from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
from transformers.convert_slow_tokenizer import bytes_to_unicode

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "decoder" / "pretokenizers"
MERGES = [
    "1 2", "12 3", "4 5", "0 0", "00 0",
    "h e", "he l", "hel l", "hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor l", "Ġworl d",
    "' s", "' S", "' t", "' T", "D O", "DO N", "N '", "' m", "' M",
    ". y", ".y z", "Ċ Ċ", "ĉ i", "Ġ Ġ", "Ġ 1", "Ġ1 2",
]
STRINGS = [
    "12345 and 1000000",
    "hello world, HE'S and DON'T, I'm",
    "x.yz,abc;def foo_bar-baz/qux",
    "\n\n\tindented\n  code()",
    " 12 leading space",
    "naïve café 🙂",
    "",
]


def vocabulary():
    symbols = list(bytes_to_unicode().values())
    merged = ["".join(m.split(" ")) for m in MERGES]
    return symbols + [m for m in merged if m not in symbols]


def write_gguf(path, pre, tokens):
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_merges(MERGES)
    w.add_token_types([1] * len(tokens))
    w.add_add_bos_token(False)
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def built(pre, tokens):
    tok = tokenizers.Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                   merges=[tuple(m.split(" ", 1)) for m in MERGES])
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return tok


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    tokens = vocabulary()
    record = {"strings": STRINGS}
    for pre in ["qwen2", "llama-bpe"]:
        write_gguf(OUT / f"{pre}.gguf", pre, tokens)
        theirs = transformers.AutoTokenizer.from_pretrained(OUT, gguf_file=f"{pre}.gguf")
        ours = built(pre, tokens)
        record[pre] = {
            "transformers": [theirs(s, add_special_tokens=False)["input_ids"] for s in STRINGS],
            "tokenizers": [ours.encode(s, add_special_tokens=False).ids for s in STRINGS],
        }
        agree = record[pre]["transformers"] == record[pre]["tokenizers"]
        print(f"{pre}: the two references {'agree' if agree else 'DISAGREE'}")
    differ = [s for i, s in enumerate(STRINGS)
              if record["qwen2"]["tokenizers"][i] != record["llama-bpe"]["tokenizers"][i]]
    print(f"strings the two splits tell apart: {differ}")
    (OUT / "expected.json").write_text(json.dumps(record, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
