#!/usr/bin/env python3
"""Convert a golden-*.json file of the reference models to the plain text form
the C tests read (no JSON parser in C needed):

    cases <n>
    prompt_hex <hex of the prompt's UTF-8 bytes>
    prompt_ids <count> <ids...>
    last_logits <count> <values...>
    greedy_ids <count> <ids...>
    greedy_margins <count> <values...>
    (the five lines repeated per case)

Usage: golden_to_txt.py golden-tiny.json > golden-tiny.txt"""
import json
import sys

d = json.load(open(sys.argv[1]))
out = ["cases %d" % len(d["cases"])]
for c in d["cases"]:
    out.append("prompt_hex " + c["prompt"].encode("utf-8").hex())
    for key in ("prompt_ids", "last_logits", "greedy_ids", "greedy_margins"):
        vals = c[key]
        out.append("%s %d %s" % (key, len(vals), " ".join(repr(v) for v in vals)))
sys.stdout.write("\n".join(out) + "\n")
