"""Consensus positives without ground truth: ``vote`` and ``dawid_skene`` (``model`` lives in model_consensus).

Both work per finding on the vote states of :mod:`cxr_max.drift.findings` (ABSENT = negative or not
mentioned, PRESENT, UNCERTAIN), over the teachers whose trajectory is *usable* (present, not a
refusal, something extractable).

``vote`` (plurality):
    the state with the most votes wins. A tie between the top states gives UNCERTAIN and is flagged
    (``Consensus.tie``); so two teachers that disagree produce an uncertain finding, and so do equal
    numbers of hedging and committed teachers.
``dawid_skene``:
    crowd-kit's Dawid-Skene model estimates, per finding, each teacher's confusion matrix
    P(teacher says s | true state) without ground truth (EM over all images), and the posterior of
    each image's state; the consensus is the posterior's argmax (an exact tie of the top two
    posteriors gives UNCERTAIN). ``support`` is the posterior of the chosen state.

After either rule:

- ``No Finding`` is made consistent: when any finding other than No Finding / Support Devices is
  PRESENT, a PRESENT No Finding becomes ABSENT.
- Output labels: PRESENT -> 1.0, UNCERTAIN -> -1.0, ABSENT -> 0.0 when at least one usable teacher
  negated the finding explicitly, else None (not mentioned).
- Side of a lateral finding the consensus holds PRESENT (or UNCERTAIN): plurality of the sides named by the
  teachers that hold it PRESENT or UNCERTAIN, ignoring sides they contradicted themselves on; a tie or no side
  gives an unspecified side (flagged in ``side_tie``).
- ``agreement[i, t]``: the fraction of the 14 findings on which teacher t's state equals the
  consensus, where a lateral finding both hold PRESENT with known sides only agrees if the sides agree
  (NaN where the teacher did not vote).
- ``informative_agreement[i, t]``: the same restricted to the findings the teacher or the consensus
  holds present or uncertain (1.0 when both call everything absent); drift detection's overall signal
  and the reliability/drift negative weights use it.
- ``confidence[i]``: the mean ``support`` over the image's *contested-or-positive* findings (any
  usable teacher said PRESENT or UNCERTAIN); 1.0 when every usable teacher calls every finding absent.
  ``support`` for ``vote`` is the share of usable teachers voting the chosen state.
- ``low_confidence[i]``: fewer than ``min_confident_teachers`` usable teachers, a tie, or
  ``confidence < low_confidence_below``. Low-confidence positives are kept and marked, never dropped.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Literal

import numpy as np
import pandas as pd

from cxr_max.drift.findings import ABSENT, LATERAL_INDEX, NEG, POS, PRESENT, UNC, UNCERTAIN, Panel
from cxr_max.labels import CHEXPERT_LABELS

Method = Literal["vote", "dawid_skene", "model"]
N_STATES = 3
NO_FINDING = CHEXPERT_LABELS.index("No Finding")
# Label indices that are not pathologies (No Finding, Support Devices).
NOT_PATHOLOGY = {NO_FINDING, CHEXPERT_LABELS.index("Support Devices")}


@dataclasses.dataclass
class Consensus:
    """The consensus over a panel's images (arrays aligned with the panel's images and teachers)."""

    method: str
    state: np.ndarray  # [I, 14] int8 ABSENT / PRESENT / UNCERTAIN
    labels: np.ndarray  # [I, 14] int8 NM / POS / NEG / UNC (CheXpert codes of the consensus)
    side: np.ndarray  # [I, 4] int8 side codes
    support: np.ndarray  # [I, 14] float
    tie: np.ndarray  # [I, 14] bool
    side_tie: np.ndarray  # [I, 4] bool
    agreement: np.ndarray  # [I, T] float, NaN where the teacher did not vote
    informative_agreement: np.ndarray  # [I, T] float: agreement on the informative findings only
    confidence: np.ndarray  # [I] float
    n_usable: np.ndarray  # [I] int
    low_confidence: np.ndarray  # [I] bool
    confusion: np.ndarray | None = None  # [14, T, 3 true, 3 said] P(said | true) (dawid_skene only)
    texts: np.ndarray | None = None  # [I] object: generated consensus text (model only; None = never finished)
    unsupported: np.ndarray | None = None  # [I, 14] bool: held present/uncertain by no usable teacher (model only)
    unfinished: np.ndarray | None = None  # [I] bool: the generation hit max_new_tokens, text dropped (model only)


def finish_consensus(panel: Panel, method: str, state: np.ndarray, support: np.ndarray, tie: np.ndarray, *,
                     min_confident_teachers: int, low_confidence_below: float, confusion=None, texts=None) -> Consensus:
    """The parts shared by every method: No Finding rule, output labels, sides, agreement, confidence
    (public for the other consensus methods, e.g. :mod:`cxr_max.drift.model_consensus`)."""
    votes = panel.state
    usable = panel.usable
    state = state.copy()
    pathology = np.ones(len(CHEXPERT_LABELS), dtype=bool)
    pathology[list(NOT_PATHOLOGY)] = False
    clash = (state[:, pathology] == PRESENT).any(axis=1) & (state[:, NO_FINDING] == PRESENT)
    state[clash, NO_FINDING] = ABSENT

    negated = ((panel.labels == NEG) & usable[:, :, None]).any(axis=1)
    labels = np.where(state == PRESENT, POS, np.where(state == UNCERTAIN, UNC, np.where(negated, NEG, 0)))
    labels = labels.astype(np.int8)

    # sides: plurality over teachers that hold the finding present/uncertain and named a consistent side
    lat_state = state[:, list(LATERAL_INDEX)]
    lat_votes = votes[:, :, list(LATERAL_INDEX)]
    voters = ((lat_votes == PRESENT) | (lat_votes == UNCERTAIN)) & (panel.side > 0) & ~panel.side_conflict
    counts = np.stack([(voters & (panel.side == c)).sum(axis=1) for c in (1, 2, 3)], axis=-1)  # [I, 4, 3]
    top = counts.max(axis=-1)
    n_top = (counts == top[..., None]).sum(axis=-1)
    side = np.where((top > 0) & (n_top == 1), counts.argmax(axis=-1) + 1, 0).astype(np.int8)
    side_tie = (top > 0) & (n_top > 1) & (lat_state != ABSENT)
    side[lat_state == ABSENT] = 0

    agreement = agreement_with(panel, state, side)
    informative = informative_agreement_with(panel, state, side)
    contested = ((votes == PRESENT) | (votes == UNCERTAIN)).any(axis=1)
    n_contested = contested.sum(axis=1)
    conf = np.where(n_contested > 0, (support * contested).sum(axis=1) / np.maximum(n_contested, 1), 1.0)
    n_usable = usable.sum(axis=1)
    low = (n_usable < min_confident_teachers) | tie.any(axis=1) | (conf < low_confidence_below)
    return Consensus(method=method, state=state.astype(np.int8), labels=labels, side=side, support=support,
                     tie=tie, side_tie=side_tie, agreement=agreement,
                     informative_agreement=informative, confidence=conf, n_usable=n_usable,
                     low_confidence=low, confusion=confusion, texts=texts)


def agreement_with(panel: Panel, state: np.ndarray, side: np.ndarray) -> np.ndarray:
    """[I, T] share of findings on which each usable teacher agrees with ``state``/``side`` (NaN if no vote)."""
    votes = panel.state
    same = votes == state[:, None, :]
    lat = list(LATERAL_INDEX)
    both_sided = (votes[:, :, lat] == PRESENT) & (state[:, None, lat] == PRESENT) & (panel.side > 0) \
        & (side[:, None, :] > 0) & ~panel.side_conflict
    side_ok = ~both_sided | (panel.side == side[:, None, :])
    same[:, :, lat] &= side_ok
    agree = same.mean(axis=2)
    return np.where(panel.usable, agree, np.nan)


def informative_agreement_with(panel: Panel, state: np.ndarray, side: np.ndarray) -> np.ndarray:
    """[I, T] agreement restricted to the *informative* findings of each (image, teacher): those the
    teacher or the consensus holds present or uncertain (1.0 when both call everything absent; NaN
    where the teacher did not vote). Unlike :func:`agreement_with` it is not diluted by the many
    findings everybody calls absent, so it is the signal drift detection and negative weights use."""
    votes = panel.state
    informative = (votes != ABSENT) | (state[:, None, :] != ABSENT)
    same = votes == state[:, None, :]
    lat = list(LATERAL_INDEX)
    both_sided = (votes[:, :, lat] == PRESENT) & (state[:, None, lat] == PRESENT) & (panel.side > 0) \
        & (side[:, None, :] > 0) & ~panel.side_conflict
    same[:, :, lat] &= ~both_sided | (panel.side == side[:, None, :])
    n_inf = informative.sum(axis=2)
    agree = np.where(n_inf > 0, (same & informative).sum(axis=2) / np.maximum(n_inf, 1), 1.0)
    return np.where(panel.usable, agree, np.nan)


def _plurality(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """votes [I, T, K] with NO_VOTE -> (state [I, K], support [I, K], tie [I, K])."""
    counts = np.stack([(votes == s).sum(axis=1) for s in (ABSENT, PRESENT, UNCERTAIN)], axis=-1)
    total = np.maximum(counts.sum(axis=-1), 1)
    top = counts.max(axis=-1)
    tie = (counts == top[..., None]).sum(axis=-1) > 1
    state = np.where(tie, UNCERTAIN, counts.argmax(axis=-1)).astype(np.int8)
    chosen = np.take_along_axis(counts, state[..., None].astype(np.int64), axis=-1)[..., 0]
    return state, chosen / total, tie


def vote_consensus(panel: Panel, *, min_confident_teachers: int = 3, low_confidence_below: float = 0.6) -> Consensus:
    """Per-finding plurality over the usable teachers (see the module docstring for every rule)."""
    state, support, tie = _plurality(panel.state)
    return finish_consensus(panel, "vote", state, support, tie, min_confident_teachers=min_confident_teachers,
                   low_confidence_below=low_confidence_below)


def dawid_skene_consensus(panel: Panel, *, n_iter: int = 100, tol: float = 1e-5, min_confident_teachers: int = 3,
                          low_confidence_below: float = 0.6) -> Consensus:
    """Per-finding Dawid-Skene (crowd-kit) over the usable teachers; also returns each teacher's confusion."""
    from crowdkit.aggregation import DawidSkene

    votes = panel.state
    n_img, n_t, n_k = votes.shape
    ii, tt = np.nonzero(panel.usable)
    state = np.empty((n_img, n_k), dtype=np.int8)
    support = np.empty((n_img, n_k))
    tie = np.zeros((n_img, n_k), dtype=bool)
    confusion = np.full((n_k, n_t, N_STATES, N_STATES), np.nan)
    for k in range(n_k):
        said = votes[ii, tt, k]
        observed = np.unique(said)
        if len(observed) == 1:  # everyone always says the same thing: nothing to estimate
            state[:, k] = observed[0]
            support[:, k] = 1.0
            for t in range(n_t):
                confusion[k, t, observed[0], :] = 0.0
                confusion[k, t, observed[0], observed[0]] = 1.0
            continue
        df = pd.DataFrame({"task": ii, "worker": tt, "label": said.astype(np.int64)})
        ds = DawidSkene(n_iter=n_iter, tol=tol)
        with warnings.catch_warnings():  # crowd-kit 1.4 uses pandas APIs that pandas 3 deprecates
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            proba = ds.fit_predict_proba(df)
        post = np.zeros((n_img, N_STATES))
        cols = [int(c) for c in proba.columns]
        post[np.asarray(proba.index, dtype=np.int64)[:, None], np.asarray(cols)[None, :]] = proba.to_numpy()
        order = np.sort(post, axis=1)
        tie[:, k] = np.isclose(order[:, -1], order[:, -2])
        state[:, k] = np.where(tie[:, k], UNCERTAIN, post.argmax(axis=1))
        support[:, k] = np.take_along_axis(post, state[:, k, None].astype(np.int64), axis=1)[:, 0]
        # errors_: index (worker, observed label), columns true label -> P(observed | true)
        err = ds.errors_
        for (worker, said_label), row in err.iterrows():
            for true_label, p in row.items():
                confusion[k, int(worker), int(true_label), int(said_label)] = p
    return finish_consensus(panel, "dawid_skene", state, support, tie, min_confident_teachers=min_confident_teachers,
                   low_confidence_below=low_confidence_below, confusion=confusion)


def usable_images(panel: Panel, *, min_usable: int = 2) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Which images can get a consensus, and why the others cannot.

    Returns ``keep`` [I] and a dict of reason -> [I] mask over the skipped images:
    "all teachers refused" (every present teacher refused) and "fewer than {min_usable} usable
    trajectories" (the rest: missing teachers, failures, no extractable findings, some refusals).
    """
    n_usable = panel.usable.sum(axis=1)
    keep = n_usable >= min_usable
    n_present = panel.present.sum(axis=1)
    all_refused = (n_present > 0) & (panel.refused.sum(axis=1) == n_present)
    return keep, {
        "all teachers refused": ~keep & all_refused,
        f"fewer than {min_usable} usable trajectories": ~keep & ~all_refused,
    }

