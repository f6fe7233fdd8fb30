"""How many BPE tokens open_clip's tokenizer gives a caption, without importing open_clip (and so torch).

`vlm data inspect` reports caption lengths in tokens; open_clip's tokenizer module imports torch at its top,
which alone costs seconds and most of a GB. This is its `SimpleTokenizer.encode` (clean="lower", the
vocabulary file shipped in the open_clip package) reduced to counting; tests/test_cheap_commands.py checks
the counts against open_clip's own.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
from pathlib import Path

import ftfy
import regex

PATTERN = regex.compile(r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                        regex.IGNORECASE)
N_MERGES = 49152 - 256 - 2  # open_clip's SimpleTokenizer keeps merges[1 : N_MERGES + 1]


@functools.lru_cache(maxsize=1)
def _merge_ranks() -> dict[tuple[str, str], int]:
    spec = importlib.util.find_spec("open_clip")  # finds the package folder without running its __init__
    assert spec is not None and spec.submodule_search_locations, "open_clip is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")[1:N_MERGES + 1]
    return {tuple(line.split()): rank for rank, line in enumerate(lines)}


@functools.lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    """open_clip's `bytes_to_unicode`: each byte as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


@functools.lru_cache(maxsize=65536)
def _bpe_pieces(token: str) -> int:
    """How many vocabulary entries the BPE merges leave of one pre-token (its bytes as characters)."""
    ranks = _merge_ranks()
    word = (*token[:-1], token[-1] + "</w>")
    while len(word) > 1:
        pairs = {(a, b) for a, b in zip(word, word[1:], strict=False)}
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = tuple(merged)
    return len(word)


def bpe_token_count(text: str) -> int:
    """The number of ids open_clip's `SimpleTokenizer.encode(text)` returns (no start/end-of-text tokens)."""
    text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
    chars = _byte_chars()
    return sum(1 if piece in ("<start_of_text>", "<end_of_text>") else
               _bpe_pieces("".join(chars[b] for b in piece.encode("utf-8")))
               for piece in PATTERN.findall(text))
