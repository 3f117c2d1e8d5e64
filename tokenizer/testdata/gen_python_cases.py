#!/usr/bin/env python3
"""Writes python_cases.json: random tricky strings with their pre-tokenizer pieces (Python regex
module, the ground truth) and their ids from the reference tokenizer (shared/tools/reference/
llada2_ref.py, which matches Hugging Face tokenizers). Run from tokenizer/testdata:
    python3 gen_python_cases.py [path/to/llada2_ref.py dir]
Needs python3 with regex; torch is not needed (stubbed, only the tokenizer is used)."""
import json, os, random, sys, types

ref_dir = sys.argv[1] if len(sys.argv) > 1 else "../../../shared/tools/reference"
for name in ("torch", "torch.nn", "torch.nn.functional"):
    sys.modules.setdefault(name, types.ModuleType(name))
sys.modules["torch"].nn = sys.modules["torch.nn"]
sys.modules["torch.nn"].functional = sys.modules["torch.nn.functional"]
sys.path.insert(0, ref_dir)
import llada2_ref  # noqa: E402

tok = llada2_ref.Tokenizer("../../models/llada2-tiny-go")

# Pieces that stress the pattern: contractions in both cases (and ſ, which folds to s), every kind
# of whitespace (\s is White_Space), letters and digits from several scripts, letters newer than
# Go's Unicode tables, marks, symbols, emoji.
ALPHABET = (["a", "b", "Z", "x", "é", "ß", "İ", "ж", "中", "文", "ا", "ก", "\U000323b0", "\u0c5c", "ſ",
             "0", "7", "٣", "²", "Ⅷ", "\U00010d40",
             " ", " ", " ", "  ", "\t", "\n", "\r", "\r\n", "\v", "\f", "\x85", "\xa0", "\u2003", "\u3000",
             "\u2028", "\u1680", "\x1c",
             "'", "'s", "'S", "'t", "'T", "'re", "'RE", "'Ve", "'vE", "'m", "'M", "'ll", "'LL", "'lL", "'d",
             "'D", "'x", "'ſ", "’s",
             ".", ",", "(", ")", "{", "}", "-", "_", "\"", ":=", "!", "\u0301", "🚀", "🔥", "€", "\x00", "\x7f"])

def rand_text(rng):
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 24)))

rng = random.Random(20260501)
fixed = ["ſ'ſ 'ſx", "x\U000323b0y \U00010d40\U00010d41", "  \n\n  x", "a \t b", "a   1", "\u2003\u2003a",
         "'ll'LL'Ll", "x'sup", "((hello", "hi\r\n\r\n\tthere", "end   ", " \n ", "\x1c\x1dab",
         "\u0301a\u0301", "'\n", "1'22'3"]
texts = fixed + [rand_text(rng) for _ in range(1500)]
cases = [{"text": t, "pieces": tok.pat.findall(t), "ids": tok.encode(t)} for t in texts]
with open("python_cases.json", "w") as f:
    json.dump({"generator": "gen_python_cases.py", "cases": cases}, f, ensure_ascii=True, indent=0)
