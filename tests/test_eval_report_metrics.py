"""report_metrics equals pycocoevalcap's own scorers on the same tokens; tokeniser equals Java PTB."""

from __future__ import annotations

import random

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge, my_lcs

from cxr_max.errors import DataError, SkipLog
from cxr_max.evaluation import nlg_metrics as rm_module
from cxr_max.evaluation.nlg_metrics import (
    bleu_scores,
    cider_d_scores,
    lcs_length,
    report_metrics,
    rouge_l_scores,
)
from cxr_max.evaluation.tokenize import java_available, ptb_tokenize, simple_tokenize

VOCAB = (
    "the lungs are clear no pleural effusion or pneumothorax heart size is normal small left right mild "
    "moderate cardiomegaly edema tube in standard position unchanged"
).split()

SENTENCES = [
    "The lungs are clear.", "No pleural effusion or pneumothorax.", "Heart size is normal.",
    "Small left pleural effusion is unchanged.", "Mild pulmonary vascular congestion.",
    "Right lower lobe opacity may reflect atelectasis or pneumonia.",
    "The cardiomediastinal silhouette is within normal limits.",
    "Endotracheal tube terminates 4 cm above the carina.", "No acute cardiopulmonary process.",
    "Moderate cardiomegaly (stable) with bibasilar atelectasis.", "The patient's NG tube is in the stomach.",
]


def _random_corpus(seed: int, n: int):
    rng = random.Random(seed)

    def sent():
        return [rng.choice(VOCAB) for _ in range(rng.choice([1, 2, 3, 4, 7, 15, 30, 60]))]

    hyps = [sent() for _ in range(n)]
    refs = [[sent() for _ in range(rng.randint(1, 4))] for _ in range(n)]
    return hyps, refs


def _coco_inputs(hyps, refs):
    gts = {i: [" ".join(r) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [" ".join(h)] for i, h in enumerate(hyps)}
    return gts, res


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scorers_equal_pycocoevalcap(seed):
    hyps, refs = _random_corpus(seed, 300)
    gts, res = _coco_inputs(hyps, refs)

    ref_bleu, ref_bleu_pp = Bleu(4).compute_score(gts, res, verbose=0)
    bleu, bleu_pp = bleu_scores(hyps, refs)
    assert bleu == pytest.approx(ref_bleu, rel=1e-12, abs=1e-15)
    for k in range(4):
        assert bleu_pp[k] == pytest.approx(ref_bleu_pp[k], rel=1e-12, abs=1e-15)

    _, ref_rouge_pp = Rouge().compute_score(gts, res)
    assert rouge_l_scores(hyps, refs) == pytest.approx(list(ref_rouge_pp), rel=1e-12, abs=1e-15)

    ref_cider, ref_cider_pp = Cider().compute_score(gts, res)
    cider_pp = cider_d_scores(hyps, refs)
    assert cider_pp == pytest.approx(list(ref_cider_pp), rel=1e-10, abs=1e-12)
    assert sum(cider_pp) / len(cider_pp) == pytest.approx(ref_cider, rel=1e-10)


def test_lcs_matches_dynamic_programming():
    rng = random.Random(7)
    for _ in range(300):
        a = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        expected = my_lcs(a, b) if a and b else 0
        assert lcs_length(a, b) == expected == lcs_length(b, a)


def test_report_metrics_end_to_end_equals_reference_on_same_tokens():
    rng = random.Random(3)
    preds = [" ".join(rng.sample(SENTENCES, rng.randint(1, 4))) for _ in range(60)]
    refs = [[" ".join(rng.sample(SENTENCES, rng.randint(1, 4))) for _ in range(rng.randint(1, 2))] for _ in range(60)]
    out = report_metrics(preds, refs, meteor=False, per_pair=True)
    hyps = [" ".join(simple_tokenize(p)) for p in preds]
    gts = {i: [" ".join(simple_tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [out[f"bleu{k}"] for k in range(1, 5)] == pytest.approx(bleu, rel=1e-12)
    assert out["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], rel=1e-12)
    assert out["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], rel=1e-10)
    assert out["n"] == 60 and out["n_skipped"] == 0
    assert out["meteor"] is None and "meteor=False" in out["meteor_skipped"]
    assert len(out["per_pair"]["rouge_l"]) == 60 and out["per_pair"]["index"] == list(range(60))
    # identical prediction and reference: BLEU and ROUGE-L are 1
    same = report_metrics(SENTENCES, SENTENCES, meteor=False)
    assert same["bleu1"] == pytest.approx(1.0) and same["rouge_l"] == pytest.approx(1.0)


def test_simple_tokenizer_rules():
    assert simple_tokenize("Small left pleural effusion (unchanged), 2.5 cm.") == [
        "small", "left", "pleural", "effusion", "-lrb-", "unchanged", "-rrb-", "2.5", "cm"]
    assert simple_tokenize("The patient's tube; don't move it vs. e.g. 1,000 ml at 10:30.") == [
        "the", "patient", "'s", "tube", "do", "n't", "move", "it", "vs.", "e.g.", "1,000", "ml", "at", "10:30"]
    assert simple_tokenize("Left-sided PICC and/or ___ -- 50%!") == ["left-sided", "picc", "and/or", "___", "50", "%"]


@pytest.mark.skipif(not java_available(), reason="java not installed: PTBTokenizer cannot run")
def test_simple_tokenizer_equals_java_ptb():
    rng = random.Random(11)
    pieces = (
        "the left right pleural effusion 2.5 cm , . ; : ( ) [ ] ' \" - -- ... ? ! patient's don't it's vs. "
        "e.g. ___ 50% #1 & a/b top-normal x-ray 10:30 1,000 can't I'm we'll"
    ).split(" ")
    texts = SENTENCES + [" ".join(rng.choice(pieces) for _ in range(rng.randint(3, 20))) for _ in range(150)]
    assert [simple_tokenize(t) for t in texts] == ptb_tokenize(texts)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        report_metrics(["a b", "c d"], ["a b"], meteor=False)
    with pytest.raises(DataError, match="no predictions"):
        report_metrics([], [], meteor=False)
    with pytest.raises(DataError, match=r"row 1.*empty prediction|empty prediction"):
        report_metrics(["no effusion", "  "], ["no effusion", "small effusion"], meteor=False)
    with pytest.raises(DataError, match="row 0") as e:
        report_metrics([b"\xff\xfe bad"], ["ok text"], meteor=False)
    assert "UTF-8" in str(e.value)
    with pytest.raises(DataError, match="row 0"):
        report_metrics([None], ["ok text"], meteor=False)  # type: ignore[list-item]
    runaway = "effusion " * 5000
    with pytest.raises(DataError, match="runaway"):
        report_metrics([runaway], ["small effusion"], meteor=False)
    # valid UTF-8 bytes are accepted
    assert report_metrics([b"no effusion"], ["no effusion"], meteor=False)["bleu1"] == pytest.approx(1.0)


def test_skip_policy_counts_every_skip():
    skips = SkipLog()
    out = report_metrics(
        ["no effusion", "", b"\xff", "small effusion"],
        ["no effusion", "x", "y", ""],
        meteor=False, on_error="skip", skips=skips,
    )
    assert out["n"] == 1 and out["n_skipped"] == 3
    assert skips.total == 3 and skips.counts["empty prediction"] == 1
    with pytest.raises(DataError, match="every prediction"):
        report_metrics([""], ["x"], meteor=False, on_error="skip", skips=SkipLog())


def test_meteor_skipped_without_java(monkeypatch):
    monkeypatch.setattr(rm_module, "java_available", lambda: False)
    out = report_metrics(["no effusion"], ["no effusion"])
    assert out["meteor"] is None and "java not found" in out["meteor_skipped"]
    with pytest.raises(RuntimeError, match="Java"):
        report_metrics(["no effusion"], ["no effusion"], meteor=True)


@pytest.mark.slow
@pytest.mark.skipif(not java_available(), reason="java not installed: METEOR cannot run")
def test_meteor_with_java_in_range():
    out = report_metrics(["small left pleural effusion", "no pneumothorax"],
                         ["small left pleural effusion", "heart size is normal"], meteor=True, per_pair=True)
    assert out["per_pair"]["meteor"][0] > 0.9 and out["per_pair"]["meteor"][1] < 0.3
    assert 0.0 < out["meteor"] < 1.0 and "meteor_skipped" not in out


def test_repeated_texts_share_work_but_not_results():
    """Many repeated texts (as in real evaluation sets): cached tokens / n-grams give the same scores."""
    rng = random.Random(5)
    pool = [" ".join(rng.sample(SENTENCES, rng.randint(1, 4))) for _ in range(15)]
    preds = [rng.choice(pool) for _ in range(120)]
    refs = [rng.choice(pool) if i % 4 else [rng.choice(pool), rng.choice(pool)] for i in range(120)]
    out = report_metrics(preds, refs, meteor=False, per_pair=True)
    hyps = [" ".join(simple_tokenize(p)) for p in preds]
    gts = {i: [" ".join(simple_tokenize(r)) for r in ([rs] if isinstance(rs, str) else rs)] for i, rs in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    assert [out[f"bleu{k}"] for k in range(1, 5)] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0], rel=1e-12)
    assert out["per_pair"]["cider"] == pytest.approx(list(Cider().compute_score(gts, res)[1]), rel=1e-10, abs=1e-12)
    # a shared n-gram index gives exactly the numbers of fresh ones
    _, tok_p, tok_r = rm_module.prepare_pairs(preds, refs)
    index = rm_module._NgramIndex(4)
    assert bleu_scores(tok_p, tok_r, _index=index) == bleu_scores(tok_p, tok_r)
    assert cider_d_scores(tok_p, tok_r, _index=index) == cider_d_scores(tok_p, tok_r)
    # repeated texts get their own token lists (editing one does not change another)
    first, again = tok_p[0], tok_p[preds.index(preds[0], 1)] if preds.count(preds[0]) > 1 else None
    assert again is not None and first == again and first is not again
