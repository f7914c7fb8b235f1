#!/usr/bin/env python3
"""The reference ids for tests/bert_tokenizer_test.cpp: Hugging Face
tokenizers (the peers': 0.15.2 in the 1.13 pass, 0.23.3 in the 2.15 pass) on
each sentence of SENTENCES_FILE.

  tokenizer_check.py TOKENIZER_JSON SENTENCES_FILE

SENTENCES_FILE holds one JSON string per line (so that a sentence may hold
newlines and any character). The first line printed names the versions:
  {"tokenizers": "0.23.3", "unicode": "14.0.0"}       # unicode: Python's unicodedata
then, for each sentence, one JSON line:
  {"ids": [...], "type_ids": [...], "mask": [...],   # the file's truncation and padding
   "full_ids": [...],                                 # neither truncation nor padding
   "normalized": "...",                               # the normalizer's output
   "unassigned": true|false}                          # a code point Python's Unicode lacks
"""
import json
import sys
import unicodedata

import tokenizers
from tokenizers import Tokenizer


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: tokenizer_check.py TOKENIZER_JSON SENTENCES_FILE")
    as_file = Tokenizer.from_file(sys.argv[1])
    full = Tokenizer.from_file(sys.argv[1])
    full.no_truncation()
    full.no_padding()
    with open(sys.argv[2], encoding="utf-8") as f:
        sentences = [json.loads(line) for line in f if line.strip()]
    print(json.dumps({"tokenizers": tokenizers.__version__, "unicode": unicodedata.unidata_version}))
    for s, e, g in zip(sentences, as_file.encode_batch(sentences), full.encode_batch(sentences)):
        print(json.dumps({"ids": e.ids, "type_ids": e.type_ids, "mask": e.attention_mask, "full_ids": g.ids,
                          "normalized": full.normalizer.normalize_str(s),
                          "unassigned": any(unicodedata.category(c) == "Cn" for c in s)}))


if __name__ == "__main__":
    main()
