"""BM25 retrieval over document chunks, with the `bm25s` library.

Terms are lower-cased runs of letters and digits (underscores split, so the SQL identifier
`net_revenue` matches the prose "net revenue"), minus bm25s's English stopwords, with English
plurals folded ("customers" -> "customer", "policies" -> "policy"). That folding is the only
stemming (a simplification: "ordered" does not match "order"; a Snowball stemmer would need
one more dependency). Every chunk is scored against the
query (`BM25.get_scores`, Lucene's BM25 with k1 = 1.5, b = 0.75); chunks that share no term
with the query (score 0) are never returned, and ties are broken by the chunk's position in
the folder, so the ranking is deterministic.
"""

from __future__ import annotations

import re

import numpy as np

from rlsd.context.documents import Chunk

_TERM_RE = re.compile(r"[^\W_]+")


def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def singular(term: str) -> str:
    """`term` with an English plural ending folded (`policies` -> `policy`, `orders` ->
    `order`; `class`, `status` and `analysis` are left alone)."""
    if len(term) > 4 and term.endswith("ies"):
        return term[:-3] + "y"
    if len(term) > 3 and term.endswith("s") and not term.endswith(("ss", "us", "is")):
        return term[:-1]
    return term


def terms(text: str, stopwords: frozenset[str] = frozenset()) -> list[str]:
    """The BM25 terms of `text`, in order (repeats kept: BM25 counts them)."""
    return [singular(t) for t in _TERM_RE.findall(text.lower()) if t not in stopwords]


class DocumentIndex:
    """A BM25 index of `chunks`; `search(query, top_k)` ranks them against a query."""

    def __init__(self, chunks: list[Chunk], k1: float = 1.5, b: float = 0.75):
        import bm25s

        if not chunks:
            raise ValueError("DocumentIndex needs at least one chunk")
        self.chunks = list(chunks)
        self.stopwords = _stopwords()
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index([terms(c.text, self.stopwords) for c in self.chunks], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every chunk for `query`, `[num_chunks]` float32."""
        query_terms = terms(query, self.stopwords)
        if not query_terms:
            return np.zeros(len(self.chunks), dtype=np.float32)
        return np.asarray(self._bm25.get_scores(query_terms), dtype=np.float32)

    def search(self, query: str, top_k: int) -> list[tuple[Chunk, float]]:
        """The `top_k` best chunks for `query` with their scores, best first (ties: the chunk
        that comes first in the folder); chunks with score 0 are left out."""
        scores = self.scores(query)
        order = np.lexsort((np.arange(len(scores)), -scores))  # score desc, then position
        return [(self.chunks[i], float(scores[i])) for i in order[:top_k] if scores[i] > 0]
