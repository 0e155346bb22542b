"""Helpers for the property-based parser tests (tests/engine/io/test_fuzz_*.py).

Every fuzz test feeds mutated *real* files (or files derived from them) to a parser and checks
the contract of issue 18: the parser returns (possibly with a stated repair) or raises one of the
project's errors (:class:`engine.errors.KernelightError`: DataError, ConfigError,
CheckpointError); any other exception fails the test. Where a header can claim sizes, the peak
memory the parse allocates (numpy reports to tracemalloc) is checked against the file size.

Settings: ``derandomize=True`` and no example database, so CI runs the same examples every
time; ``deadline=None`` because 2 shared cores make timings noisy. Example counts are in
``FUZZ_EXAMPLES`` (scaled by ``$KERNELIGHT_FUZZ_SCALE``, default 1).
"""
from __future__ import annotations

import json
import math
import os
import random
import tracemalloc
import warnings

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from engine.errors import KernelightError

_SCALE = float(os.environ.get("KERNELIGHT_FUZZ_SCALE", "1"))


def fuzz_settings(n: int):
    return settings(max_examples=max(1, int(n * _SCALE)), deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


INTERESTING_INTS = [0, 1, 2, 3, 4, 7, 8, 17, 255, 256, 65535, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**64 - 1,
                    10**12, -1, -5, -(2**31)]


@st.composite
def mutated_bytes(draw, data: bytes, hot: int | None = None):
    """``data`` with 1-4 byte-level mutations: flips, truncation, insertion, deletion, and the
    replacement of a decimal number by an interesting one. ``hot``: the first ``hot`` bytes (a
    header) get 40% of the mutations. Positions come from a ``Random`` seeded by hypothesis so
    they spread over the file (hypothesis' own integers favour 0, i.e. the magic bytes)."""
    import re

    rnd = random.Random(draw(st.integers(0, 2**63)))   # a seeded Random: positions spread uniformly
    out = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        n = len(out)
        if n == 0:
            break
        kind = rnd.choice(["flip", "flip", "trunc", "insert", "delete", "number", "number"])
        in_hot = bool(hot) and rnd.random() < 0.4
        lo, hi = (0, min(hot, n)) if in_hot else ((min(hot, n - 1) if hot else 0), n)
        i = rnd.randrange(lo, max(lo + 1, hi))
        if kind == "flip":
            out[min(i, n - 1)] ^= rnd.randint(1, 255)
        elif kind == "trunc":
            del out[i:]
        elif kind == "insert":
            out[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
        elif kind == "delete":
            del out[i:i + rnd.randint(1, 16)]
        else:
            nums = [m.span() for m in re.finditer(rb"-?\d+(\.\d+)?", bytes(out[lo:hi]))]
            if nums:
                a, b = rnd.choice(nums)
                v = rnd.choice([rnd.choice(INTERESTING_INTS), rnd.randint(-(2**66), 2**66),
                                rnd.uniform(-1e6, 1e6), "nan", "inf", "1e999", "abc", ""])
                out[lo + a:lo + b] = str(v).encode()
    return bytes(out)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)
    | st.sampled_from([0, -1, 1e308, -1e308, float("nan"), float("inf"), "", "../../etc/passwd", "a\x00b"]),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


@st.composite
def mutated_doc(draw, doc, max_mutations: int = 3):
    """A deep copy of a JSON-like ``doc`` with 1..max_mutations structural mutations: a value
    replaced (by a random JSON value, a number perturbed, a list truncated or duplicated) or a
    key deleted, at a random path."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, max_mutations))):
        parent, key = None, None
        node = doc
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 3)) > 0:
            keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
            k = draw(st.sampled_from(keys))
            parent, key, node = node, k, node[k]
        if parent is None:
            if isinstance(doc, dict) and doc and draw(st.booleans()):
                k = draw(st.sampled_from(list(doc)))
                doc[k] = draw(json_values)
                continue
            return draw(json_values) if draw(st.integers(0, 9)) == 0 else doc
        op = draw(st.sampled_from(["replace", "replace", "number", "delete", "list"]))
        if op == "delete":
            del parent[key]
        elif op == "number" and isinstance(node, (int, float)) and not isinstance(node, bool):
            parent[key] = draw(st.sampled_from([0, -node, node * 1e30, float("nan"), float("inf"), -1,
                                                node + 0.5, int(node) if math.isfinite(node) else 0]))
        elif op == "list" and isinstance(node, list):
            parent[key] = node[:draw(st.integers(0, len(node)))] if draw(st.booleans()) else node + node[:1]
        else:
            parent[key] = draw(json_values)
    return doc


def dumps_any(doc) -> str:
    """JSON text that may hold NaN/Infinity (Python's json writes them, as some tools do)."""
    return json.dumps(doc, allow_nan=True)


def expect_contract(fn, *, max_bytes: int | None = None):
    """Run ``fn()``; return its value or None when it raised a KernelightError. Any other exception
    propagates (the test fails). With ``max_bytes``, the traced peak allocation must stay below it."""
    if max_bytes is not None:
        tracemalloc.start()
        tracemalloc.reset_peak()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    except KernelightError:
        return None
    finally:
        if max_bytes is not None:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert peak < max_bytes, f"parser allocated {peak} bytes (limit {max_bytes})"
