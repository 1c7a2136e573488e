"""Report-generation metrics: BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR with Java), offline.

The numbers are those of the COCO caption evaluation code that papers use (``pycocoevalcap``):

* **BLEU-n** is the *corpus* BLEU of ``pycocoevalcap.bleu.Bleu``: clipped n-gram counts summed over
  all pairs, geometric mean of the 1..n precisions (with its ``tiny=1e-15``/``small=1e-9``
  smoothing constants), brevity penalty from the summed *closest* reference lengths.
* **ROUGE-L** is ``pycocoevalcap.rouge.Rouge``: per pair, the LCS precision and recall, each maximised
  over the references, combined as an F-measure with beta = 1.2; then the mean over pairs.
* **CIDEr** is ``pycocoevalcap.cider.Cider``, which is CIDEr-D: tf-idf vectors of 1..4-grams with
  document frequencies counted over the *references of the evaluated set*, clipped cosine
  similarity, a Gaussian length penalty (sigma 6) on the difference in bigram counts, mean over n,
  mean over references, times 10; then the mean over pairs.
* **METEOR** is ``pycocoevalcap.meteor.Meteor`` (METEOR 1.5 jar, ``-l en -norm``) and needs Java. It
  is computed when Java is found and ``meteor`` is not False; otherwise the result says
  ``"meteor": None`` and ``"meteor_skipped": "<reason>"``.

BLEU, ROUGE-L and CIDEr-D are re-implemented here for speed (ROUGE-L uses a bit-parallel LCS; the
n-gram statistics are computed once per *distinct* text, keyed by integer n-gram ids, and shared by
BLEU and CIDEr; CIDEr's tf-idf vectors are built once per distinct text; the "simple" tokeniser runs
once per distinct text) and are tested to equal pycocoevalcap's own scorers
on the same tokens (``tests/test_eval_report_metrics.py``). Tokenisation: see
:mod:`cxr_max.evaluation.tokenize` (``tokenizer="simple"`` by default, pure Python, equal to the
Java PTB pipeline on report text; ``tokenizer="ptb"`` runs the Java one).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from cxr_max.errors import DataError, OnError, SkipLog, handle
from cxr_max.evaluation.tokenize import java_available, ptb_tokenize, simple_tokenize

__all__ = ["report_metrics", "bleu_scores", "rouge_l_scores", "cider_d_scores", "lcs_length", "prepare_pairs"]

_SMALL, _TINY = 1e-9, 1e-15
_ROUGE_BETA = 1.2
_CIDER_SIGMA = 6.0


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _as_text(value: Any, where: str, index: int) -> str:
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where} is not valid UTF-8 ({e.reason} at byte {e.start})", path=where, row=index) from e
    if not isinstance(value, str):
        raise DataError(f"{where} must be str, got {type(value).__name__}", path=where, row=index)
    return value


def prepare_pairs(
    predictions: Sequence[Any],
    references: Sequence[Any],
    *,
    tokenizer: str | Callable[[str], list[str]] = "simple",
    max_length_ratio: float = 50.0,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
) -> tuple[list[int], list[list[str]], list[list[list[str]]]]:
    """Check and tokenise the inputs of :func:`report_metrics`.

    Returns ``(kept_indices, prediction_tokens, reference_tokens)``; each reference entry is a list of
    token lists (one per reference text). A reference may be one string or a list of strings.

    Errors (``DataError`` naming the index): different counts or no pairs at all (always raised);
    bytes that are not UTF-8, non-string items, an empty prediction or reference, a prediction more
    than ``max_length_ratio`` times as long (in tokens, and over 200 tokens) as its longest
    reference. These are raised under ``on_error="raise"`` or counted in ``skips`` under "skip".
    """
    if len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} predictions but {len(references)} references; they must pair up one to one",
            path="predictions",
        )
    if len(predictions) == 0:
        raise DataError("no predictions to score", path="predictions")
    if isinstance(tokenizer, str) and tokenizer not in ("simple", "ptb"):
        raise ValueError(f"tokenizer must be 'simple', 'ptb' or a callable, not {tokenizer!r}")

    texts_p: list[str] = []
    texts_r: list[list[str]] = []
    kept: list[int] = []
    for i, (p, r) in enumerate(zip(predictions, references)):
        try:
            pt = _as_text(p, "predictions", i)
            refs = [r] if isinstance(r, str | bytes | bytearray) else list(r) if isinstance(r, Sequence) else [r]
            rt = [_as_text(x, "references", i) for x in refs]
            if not pt.strip():
                raise DataError("empty prediction", path="predictions", row=i)
            if not rt or not all(x.strip() for x in rt):
                raise DataError("empty reference", path="references", row=i)
        except DataError as err:
            handle(err, on_error, skips)
            continue
        kept.append(i)
        texts_p.append(pt)
        texts_r.append(rt)

    if tokenizer == "ptb":
        flat = ptb_tokenize(texts_p + [x for rs in texts_r for x in rs])
        tok_p, rest = flat[: len(texts_p)], iter(flat[len(texts_p) :])
        tok_r = [[next(rest) for _ in rs] for rs in texts_r]
    else:
        fn = simple_tokenize if tokenizer == "simple" else tokenizer
        if tokenizer == "simple":  # pure function: tokenise each distinct text once, copy for repeats
            seen: dict[str, list[str]] = {}

            def fn(text: str, _tok=fn) -> list[str]:
                hit = seen.get(text)
                if hit is None:
                    hit = seen[text] = _tok(text)
                    return hit
                return list(hit)

        tok_p = [fn(t) for t in texts_p]
        tok_r = [[fn(x) for x in rs] for rs in texts_r]

    out_i, out_p, out_r = [], [], []
    for i, p, rs in zip(kept, tok_p, tok_r):
        longest = max(len(x) for x in rs)
        try:
            if not p:
                raise DataError("prediction has no tokens after tokenisation", path="predictions", row=i)
            if not all(rs):
                raise DataError("a reference has no tokens after tokenisation", path="references", row=i)
            if len(p) > 200 and len(p) > max_length_ratio * longest:
                raise DataError(
                    f"prediction has {len(p)} tokens, more than {max_length_ratio:g} x the longest reference "
                    f"({longest}); a runaway generation? (raise max_length_ratio to score it anyway)",
                    path="predictions",
                    row=i,
                )
        except DataError as err:
            handle(err, on_error, skips)
            continue
        out_i.append(i)
        out_p.append(p)
        out_r.append(rs)
    if not out_i:
        raise DataError("every prediction/reference pair was skipped; nothing to score", path="predictions")
    return out_i, out_p, out_r


# --------------------------------------------------------------------------------------------------
# n-gram statistics
# --------------------------------------------------------------------------------------------------


def _ngram_counts(tokens: list[str], n: int = 4) -> list[Counter]:
    """Counters of 1..n-grams (tuples), one Counter per order."""
    return [Counter(zip(*(tokens[k:] for k in range(order)))) for order in range(1, n + 1)]


class _NgramIndex:
    """n-gram counts of token lists, computed once per distinct token list and keyed by integer ids.

    Each distinct n-gram tuple (of any order) gets a small integer id the first time it is seen, so
    the BLEU and CIDEr loops hash ints instead of tuples of strings. A count dict keeps the order in
    which its n-grams first occur in the text (as ``Counter`` does), so sums over it run in the same
    order as pycocoevalcap's and give the same floating-point result.
    """

    def __init__(self, n: int = 4):
        self.n = n
        self._ids: dict[tuple, int] = {}
        self._counts: dict[tuple, list[dict[int, int]]] = {}

    def counts(self, tokens: Sequence[str]) -> list[dict[int, int]]:
        """Per order 1..n: ``{ngram id: count}`` of ``tokens`` (cached; do not modify)."""
        key = tuple(tokens)
        hit = self._counts.get(key)
        if hit is None:
            ids = self._ids
            hit = [
                {ids.setdefault(g, len(ids)): c for g, c in cnt.items()} for cnt in _ngram_counts(tokens, self.n)
            ]
            self._counts[key] = hit
        return hit


# --------------------------------------------------------------------------------------------------
# BLEU (pycocoevalcap.bleu, option "closest")
# --------------------------------------------------------------------------------------------------


def bleu_scores(
    hyps: Sequence[list[str]], refs: Sequence[list[list[str]]], n: int = 4, *, _index: _NgramIndex | None = None
) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n and per-pair BLEU-1..n, as ``pycocoevalcap.bleu.Bleu(n).compute_score``."""
    index = _index if _index is not None and _index.n == n else _NgramIndex(n)
    total_guess, total_correct = [0] * n, [0] * n
    total_test = total_ref = 0
    per_pair: list[list[float]] = [[] for _ in range(n)]
    for hyp, rs in zip(hyps, refs):
        hc = index.counts(hyp)
        if len(rs) == 1:
            maxref = index.counts(rs[0])
        else:  # clip by the largest count of each n-gram in any reference
            maxref = [{} for _ in range(n)]
            for r in rs:
                for k, cnt in enumerate(index.counts(r)):
                    m = maxref[k]
                    for g, c in cnt.items():
                        if c > m.get(g, 0):
                            m[g] = c
        testlen = len(hyp)
        reflen = min((abs(len(r) - testlen), len(r)) for r in rs)[1]
        guess = [max(0, testlen - k) for k in range(n)]
        correct = []
        for k in range(n):
            h, m = hc[k], maxref[k]
            # integer sums: the order of the shared n-grams does not matter
            correct.append(sum(min(h[g], m[g]) for g in h.keys() & m.keys()))
        total_test += testlen
        total_ref += reflen
        bleu = 1.0
        ratio = (testlen + _TINY) / (reflen + _SMALL)
        bp = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
        for k in range(n):
            total_guess[k] += guess[k]
            total_correct[k] += correct[k]
            bleu *= (float(correct[k]) + _TINY) / (float(guess[k]) + _SMALL)
            per_pair[k].append(bleu ** (1.0 / (k + 1)) * bp)
    corpus = []
    bleu = 1.0
    for k in range(n):
        bleu *= float(total_correct[k] + _TINY) / (total_guess[k] + _SMALL)
        corpus.append(bleu ** (1.0 / (k + 1)))
    ratio = (total_test + _TINY) / (total_ref + _SMALL)
    if ratio < 1:
        corpus = [b * math.exp(1 - 1 / ratio) for b in corpus]
    return corpus, per_pair


# --------------------------------------------------------------------------------------------------
# ROUGE-L (pycocoevalcap.rouge, beta 1.2)
# --------------------------------------------------------------------------------------------------


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit-parallel (Allison-Dix / Hyyro): one big-integer update per token of ``b``, so O(len(b))
    integer operations on ``len(a)``-bit numbers instead of a ``len(a) x len(b)`` table.
    """
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l_scores(hyps: Sequence[list[str]], refs: Sequence[list[list[str]]], beta: float = _ROUGE_BETA) -> list[float]:
    """Per-pair ROUGE-L F (beta 1.2), as ``pycocoevalcap.rouge.Rouge.calc_score``."""
    scores = []
    for hyp, rs in zip(hyps, refs):
        prec, rec = [], []
        for r in rs:
            lcs = lcs_length(r, hyp)
            prec.append(lcs / float(len(hyp)))
            rec.append(lcs / float(len(r)))
        p, r_ = max(prec), max(rec)
        scores.append(((1 + beta**2) * p * r_) / float(r_ + beta**2 * p) if p != 0 and r_ != 0 else 0.0)
    return scores


# --------------------------------------------------------------------------------------------------
# CIDEr-D (pycocoevalcap.cider)
# --------------------------------------------------------------------------------------------------


def cider_d_scores(
    hyps: Sequence[list[str]],
    refs: Sequence[list[list[str]]],
    n: int = 4,
    sigma: float = _CIDER_SIGMA,
    *,
    _index: _NgramIndex | None = None,
) -> list[float]:
    """Per-pair CIDEr-D, as ``pycocoevalcap.cider.Cider(n, sigma).compute_score`` (whose mean is the
    corpus score). Document frequencies come from the references of this set of pairs."""
    index = _index if _index is not None and _index.n == n else _NgramIndex(n)
    df: Counter = Counter()
    for rs in refs:
        # n-gram ids are distinct across orders, so one set per pair covers all orders
        df.update({g for r in rs for cnt in index.counts(r) for g in cnt})
    log_n_docs = math.log(float(len(refs)))
    idf_cache: dict[int, float] = {}
    vec_cache: dict[tuple, tuple[list[dict[int, float]], list[float], int]] = {}

    def vectorise(tokens: Sequence[str]) -> tuple[list[dict[int, float]], list[float], int]:
        key = tuple(tokens)
        hit = vec_cache.get(key)
        if hit is not None:
            return hit
        counts = index.counts(tokens)
        vecs, norms = [], []
        for cnt in counts:
            vec = {}
            sq = 0.0
            for g, tf in cnt.items():
                w = idf_cache.get(g)
                if w is None:
                    w = idf_cache[g] = log_n_docs - math.log(max(1.0, float(df.get(g, 0))))
                x = float(tf) * w
                vec[g] = x
                sq += x * x
            vecs.append(vec)
            norms.append(math.sqrt(sq))
        # pycocoevalcap's "length" is the number of bigrams (its n == 1 branch), kept for equality.
        length = sum(counts[1].values()) if n > 1 else 0
        hit = vec_cache[key] = (vecs, norms, length)
        return hit

    penalty_denominator = 2 * sigma**2
    scores = []
    for hyp, rs in zip(hyps, refs):
        hv, hn, hl = vectorise(hyp)
        total = [0.0] * n
        for r in rs:
            rv, rn, rl = vectorise(r)
            delta = float(hl - rl)
            penalty = math.e ** (-(delta**2) / penalty_denominator)
            for k in range(n):
                ref_vec, hyp_vec = rv[k], hv[k]
                val = 0.0
                if not hyp_vec.keys().isdisjoint(ref_vec):  # (often no shared 3-/4-grams: skip the loop)
                    for g, x in hyp_vec.items():  # hypothesis order, as pycocoevalcap sums
                        y = ref_vec.get(g)
                        if y is not None:
                            val += min(x, y) * y
                if hn[k] != 0 and rn[k] != 0:
                    val /= hn[k] * rn[k]
                total[k] += val * penalty
        scores.append(sum(total) / n / len(rs) * 10.0)
    return scores


# --------------------------------------------------------------------------------------------------
# METEOR (Java)
# --------------------------------------------------------------------------------------------------


_METEOR_SCORER = None
_METEOR_LOCK = threading.Lock()


def _meteor(hyps: Sequence[list[str]], refs: Sequence[list[list[str]]]) -> tuple[float, list[float]]:
    """Corpus and per-pair METEOR via pycocoevalcap's Meteor. The Java process (tens of seconds to
    start: it loads a 60 MB paraphrase table) is started once per Python process and reused."""
    global _METEOR_SCORER
    from pycocoevalcap.meteor.meteor import Meteor

    with _METEOR_LOCK:
        if _METEOR_SCORER is None:
            _METEOR_SCORER = Meteor()
        gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
        res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
        score, scores = _METEOR_SCORER.compute_score(gts, res)
    return float(score), [float(s) for s in scores]


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def report_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    tokenizer: str | Callable[[str], list[str]] = "simple",
    meteor: bool | None = None,
    per_pair: bool = False,
    max_length_ratio: float = 50.0,
    on_error: OnError = "raise",
    skips: SkipLog | None = None,
) -> dict[str, Any]:
    """BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR) of generated reports against references.

    ``predictions[i]`` is scored against ``references[i]`` (one string or a list of strings).
    ``tokenizer``: "simple" (default, pure Python, see :mod:`cxr_max.evaluation.tokenize`), "ptb"
    (pycocoevalcap's Java PTBTokenizer) or a callable ``str -> list[str]``.
    ``meteor``: None = compute when Java is installed, True = require it (RuntimeError without Java),
    False = skip. A skipped METEOR gives ``"meteor": None`` and ``"meteor_skipped": reason``.
    ``per_pair``: also return per-pair scores under ``"per_pair"`` (for bootstrap CIs).
    Bad pairs raise :class:`DataError` (index named) or, with ``on_error="skip"``, are counted in
    ``skips`` and left out; ``"n"`` and ``"n_skipped"`` tell how many were scored and skipped.
    """
    local_skips = SkipLog()
    kept, hyps, refs = prepare_pairs(
        predictions, references, tokenizer=tokenizer, max_length_ratio=max_length_ratio,
        on_error=on_error, skips=local_skips,
    )
    if skips is not None:
        skips.merge(local_skips)
    index = _NgramIndex(4)  # n-gram counts shared by BLEU and CIDEr, once per distinct text
    bleu, bleu_pp = bleu_scores(hyps, refs, 4, _index=index)
    rouge_pp = rouge_l_scores(hyps, refs)
    cider_pp = cider_d_scores(hyps, refs, _index=index)
    out: dict[str, Any] = {f"bleu{k + 1}": float(bleu[k]) for k in range(4)}
    out["rouge_l"] = float(sum(rouge_pp) / len(rouge_pp))
    out["cider"] = float(sum(cider_pp) / len(cider_pp))
    meteor_pp = None
    if meteor is False:
        out["meteor"], out["meteor_skipped"] = None, "disabled (meteor=False)"
    elif not java_available():
        if meteor:
            raise RuntimeError("METEOR needs Java (java not found on PATH)")
        out["meteor"], out["meteor_skipped"] = None, "java not found on PATH (METEOR 1.5 is a Java program)"
    else:
        out["meteor"], meteor_pp = _meteor(hyps, refs)
    out["n"] = len(kept)
    out["n_skipped"] = len(predictions) - len(kept)
    out["tokenizer"] = tokenizer if isinstance(tokenizer, str) else getattr(tokenizer, "__name__", "custom")
    if per_pair:
        out["per_pair"] = {
            "index": kept,
            **{f"bleu{k + 1}": bleu_pp[k] for k in range(4)},
            "rouge_l": rouge_pp,
            "cider": cider_pp,
            **({"meteor": meteor_pp} if meteor_pp is not None else {}),
        }
    return out
