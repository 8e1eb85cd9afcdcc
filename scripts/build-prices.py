#!/usr/bin/env python3
"""Build data/prices.tsv from Portkey's open-source price table (MIT, see data/PRICES-LICENSE).

Usage: scripts/build-prices.py ../shared/data/portkey-models-pricing > data/prices.tsv

Prices stay in the source's unit, US cents per token. The source JSON carries float artefacts
(0.00007499999999999999); every price is rounded to 12 decimal places, which no real price needs,
so the shipped table is exact decimal text.
"""
import decimal
import glob
import json
import os
import sys

KINDS = ["request_token", "response_token", "cache_read_input_token", "cache_write_input_token"]
Q = decimal.Decimal("1e-12")
# Rows whose source has the cache-read and cache-write prices swapped (Anthropic's rates for
# Claude 3.7 Sonnet, which Bedrock charges too: cache reads $0.30, writes $3.75 per million).
SWAPPED_CACHE = {("bedrock", "anthropic.claude-3-7-sonnet-20250219-v1:0"), ("bedrock", "claude-3-7-sonnet-20250219")}


def price(p, kind):
    x = (p.get(kind) or {}).get("price")
    if x is None:
        return ""
    d = decimal.Decimal(x).quantize(Q, rounding=decimal.ROUND_HALF_EVEN).normalize()
    return format(d, "f")


def main(src):
    print("# provider\tmodel\tinput\toutput\tcache_read\tcache_write  (US cents per token; source: Portkey-AI/models, MIT)")
    for path in sorted(glob.glob(os.path.join(src, "*.json"))):
        provider = os.path.basename(path)[:-5]
        table = json.load(open(path), parse_float=decimal.Decimal)
        for model in sorted(table):
            payg = ((table[model] or {}).get("pricing_config") or {}).get("pay_as_you_go") or {}
            row = [price(payg, k) for k in KINDS]
            if model == "default" or not any(row[:2]):
                continue
            if (provider, model) in SWAPPED_CACHE:
                row[2], row[3] = row[3], row[2]
            print("\t".join([provider, model] + row))


if __name__ == "__main__":
    main(sys.argv[1])
