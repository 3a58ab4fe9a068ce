#!/usr/bin/env python3
"""Hugging Face's Python `tokenizers` on the same input as `distill tokenize`, timed the same way.

    python hf_tokenize.py TOKENIZER.json FILE...      (one document per file, as distill tokenize)

Times reading the files, encoding each whole text with add_special_tokens=False (one file: encode; several: encode_batch,
which spreads them over the cores in Rust, as distill tokenize does with its threads), appending the end-of-text id
and writing an llm.c .bin (uint16) to /dev/null-like memory; prints "hf: N tokens in S s, X tokens/s".
"""
import sys, time

import numpy as np
from tokenizers import Tokenizer

tok = Tokenizer.from_file(sys.argv[1])
eos = tok.token_to_id("<|endoftext|>")
if eos is None:
    eos = tok.token_to_id("</s>")
files = sys.argv[2:]
start = time.perf_counter()
texts = [open(f, encoding="utf-8", newline="").read() for f in files]
if len(texts) == 1:
    encodings = [tok.encode(texts[0], add_special_tokens=False)]
else:
    encodings = tok.encode_batch(texts, add_special_tokens=False)
ids = []
for e in encodings:
    ids.extend(e.ids)
    if eos is not None:
        ids.append(eos)
header = np.zeros(256, dtype=np.int32)
header[:3] = (20240520, 1, len(ids))
blob = header.tobytes() + np.array(ids, dtype=np.uint16).tobytes()
seconds = time.perf_counter() - start
print(f"hf: {len(ids)} tokens in {seconds:.3f} s, {len(ids) / seconds:.0f} tokens/s ({len(blob)} bytes)")
