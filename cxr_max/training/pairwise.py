"""The authors' released preference recipe: pairwise DPO rows from APO rows."""

from __future__ import annotations

from datasets import Dataset


def expand_pairwise(dataset: Dataset) -> Dataset:
    """Expand each APO row (one chosen, K rejected) into K DPO rows ``(prompt, chosen, rejected_k)``.

    Images (``images``) and identifiers are copied to every pair; ``rejected_teacher`` names the pair's teacher.
    The result is what stock ``trl.DPOTrainer`` expects.

    The copies are made by row index (``Dataset.select`` + ``flatten_indices``, Arrow-level), so images are never
    decoded and re-encoded: measured on the 400-patient world's 989 rows (5,933 pairs), the earlier
    ``map`` over decoded rows took 3 min 57 s.
    """
    drop = [c for c in ("rejected", "rejected_teachers", "rejected_weights") if c in dataset.column_names]
    rejected = dataset["rejected"]
    teachers = dataset["rejected_teachers"] if "rejected_teachers" in dataset.column_names else [None] * len(rejected)
    index, flat, names = [], [], []
    for i, negatives in enumerate(rejected):
        row_teachers = teachers[i] or []
        for k, negative in enumerate(negatives):
            index.append(i)
            flat.append(negative)
            names.append(row_teachers[k] if k < len(row_teachers) else f"negative_{k}")
    feature = getattr(dataset.features["rejected"], "feature", None)
    pairs = dataset.remove_columns(drop).select(index).flatten_indices()
    pairs = pairs.add_column("rejected", flat, feature=feature)
    return pairs.add_column("rejected_teacher", names)
