"""Records how SmolLM2's tokenizer, as the GGUF file's metadata describes it, splits a list
of strings, two ways, for tests/decoder_smollm2.rs:
- transformers' tokenizer loaded from the GGUF file (its converter may ignore the file's
  `tokenizer.ggml.pre`);
- the Python `tokenizers` package built from the file's vocabulary and merges with
  SmolLM2's Hugging Face pre-tokenizer: digits split one by one, then byte-level BPE
  without a prefix space, the file's control tokens as special tokens.
Writes tests/fixtures/decoder/smollm2/tokenizer.json.

    bash scripts/fetch-assets.sh --llm
    .venv-ref/bin/python tools/reference/record_gguf_tokenizer.py
"""

import json
import pathlib

import gguf
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "assets" / "smollm2-135m-instruct"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "tests" / "fixtures" / "decoder" / "smollm2" / "tokenizer.json"

STRINGS = [
    "384,400 km in 1969",
    "The capital of France is Paris.",
    " leading space",
    "  two leading spaces and trailing  ",
    "Question: What is 12+7?\nAnswer:",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "naïve café — “quotes” and emoji 🙂",
    "日本語のテキスト",
    "tabs\tand\r\nnewlines\n\n",
    "3.14159e-10 and 1,000,000",
    "don't, won't; it's (a) [b] {c}",
    "",
]


def field(reader, name):
    f = reader.fields[name]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def ints(reader, name):
    f = reader.fields[name]
    return [int(f.parts[i][0]) for i in f.data]


def from_metadata(path):
    reader = gguf.GGUFReader(str(path))
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    types = ints(reader, "tokenizer.ggml.token_type")
    tok = tokenizers.Tokenizer(
        models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # llama.cpp's token type 3 is a control token: a special token, never split.
    tok.add_special_tokens([t for t, ty in zip(tokens, types) if ty == 3])
    return tok


def main():
    theirs = transformers.AutoTokenizer.from_pretrained(MODEL_DIR, gguf_file=GGUF)
    built = from_metadata(MODEL_DIR / GGUF)
    record = {
        "strings": STRINGS,
        "transformers": [theirs(s, add_special_tokens=False)["input_ids"] for s in STRINGS],
        "tokenizers": [built.encode(s, add_special_tokens=False).ids for s in STRINGS],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, ensure_ascii=False, indent=1) + "\n")
    for s, a, b in zip(STRINGS, record["transformers"], record["tokenizers"]):
        print(("same " if a == b else "DIFF ") + repr(s), a if a == b else (a, b))


if __name__ == "__main__":
    main()
