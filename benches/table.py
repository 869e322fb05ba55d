#!/usr/bin/env python3
"""Prints BENCHMARKS.md's results table from the last `cargo bench --bench compare` run.

Reads criterion's estimates (median, ns per call) under target/criterion and pairs each
tollgate benchmark with its governor counterpart measured in the same run.
Usage: python3 benches/table.py [target/criterion]
"""
import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else os.path.join("target", "criterion")

ROWS = [
    ("direct allow, precise clock", "direct/allow_tollgate-precise", "direct/allow_governor-precise"),
    ("direct allow, coarse / upkeep clock", "direct/allow_tollgate-coarse", "direct/allow_governor-upkeep"),
    ("direct allow, refill on every call, precise clock", "direct/allow-refilling_tollgate-precise", "direct/allow-refilling_governor-precise"),
    ("direct deny, precise clock", "direct/deny_tollgate-precise", "direct/deny_governor-precise"),
    ("direct deny, coarse / upkeep clock", "direct/deny_tollgate-coarse", "direct/deny_governor-upkeep"),
]
for n in ("1000", "100000", "1000000"):
    ROWS.append((f"keyed hit, {int(n):,} keys, defaults", f"keyed_hit/tollgate-default/{n}", f"keyed_hit/governor-default/{n}"))
    ROWS.append((f"keyed hit, {int(n):,} keys, precise clocks", f"keyed_hit/tollgate-precise/{n}", f"keyed_hit/governor-default/{n}"))
    ROWS.append((f"keyed hit, {int(n):,} keys, best clocks", f"keyed_hit/tollgate-default/{n}", f"keyed_hit/governor-best/{n}"))
ROWS += [
    ("keyed new key, defaults", "keyed_new_key/tollgate-default", "keyed_new_key/governor-default"),
    ("2 threads, one direct bucket, defaults", "contended/direct_tollgate-default", "contended/direct_governor-default"),
    ("2 threads, keyed 100,000 keys, defaults", "contended/keyed-100000_tollgate-default", "contended/keyed-100000_governor-default"),
]


def median(path):
    with open(os.path.join(root, path, "new", "estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"]


def fmt(ns):
    return f"{ns:.1f} ns" if ns < 1000 else f"{ns / 1000:.2f} µs"


print("| benchmark (time per call) | tollgate | governor | tollgate / governor |")
print("|---|---:|---:|---:|")
for label, tg, gv in ROWS:
    try:
        a, b = median(tg), median(gv)
    except FileNotFoundError:
        continue
    print(f"| {label} | {fmt(a)} | {fmt(b)} | {a / b:.2f} |")
