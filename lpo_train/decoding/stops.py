"""Stop strings, checked incrementally: a row's text is decoded only at a step whose new token can end one.

A stop string that first appears at step t ends inside the text of token t, so token t's own text
holds the string's last character. A lookup table over the vocabulary (built once per tokenizer and
set of stop strings) flags such tokens on the device; only the flagged rows' last tokens are decoded:
a window of (the longest stop string's UTF-8 length + 1) tokens, which holds any occurrence that ends
at the new token, however the model split it into tokens. Tokens whose text is
empty or an incomplete UTF-8 piece (decoded as U+FFFD) are always flagged, and a stop string ending
in whitespace flags every token (a leading space can vanish when a token is decoded alone).
"""

from __future__ import annotations

import torch


class StopStrings:
    def __init__(self, tokenizer, stop_strings, vocab_size: int, device):
        self.tokenizer, self.strings = tokenizer, tuple(stop_strings)
        # an occurrence spans at most one token per byte of the string, plus the token it starts inside
        self.window = max(len(s.encode("utf-8")) for s in self.strings) + 1
        self.can_end = _can_end_table(tokenizer, self.strings, vocab_size).to(device)

    def may_end(self, token: torch.Tensor) -> torch.Tensor:
        """[B] bool: rows whose new token may complete a stop string (no host transfer)."""
        return self.can_end[token]

    def hits(self, tokens: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
        """For record rows ``rows`` (flagged at ``step``), whether a stop string now appears in the last
        ``window`` tokens: a bool tensor on the host (one copy of those rows' windows)."""
        windows = tokens[rows.to(tokens.device), max(0, step + 1 - self.window):step + 1].tolist()
        return torch.tensor([any(s in self.tokenizer.decode(w) for s in self.strings) for w in windows],
                            dtype=torch.bool)


def _can_end_table(tokenizer, strings: tuple[str, ...], vocab_size: int) -> torch.Tensor:
    tables = tokenizer.__dict__.setdefault("_lpo_stop_tables", {})
    key = (strings, vocab_size)
    if key not in tables:
        size = max(vocab_size, len(tokenizer))
        if any(s[-1].isspace() for s in strings):
            table = torch.ones(size, dtype=torch.bool)
        else:
            last = {s[-1] for s in strings}
            pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
            table = torch.ones(size, dtype=torch.bool)  # ids past the tokenizer's (padded vocabularies): flagged
            table[:len(pieces)] = torch.tensor([not p or "\ufffd" in p or any(c in p for c in last) for p in pieces])
        tables[key] = table
    return tables[key]
