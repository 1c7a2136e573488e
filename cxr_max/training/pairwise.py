"""The authors' released preference recipe: pairwise DPO rows from APO rows."""

from __future__ import annotations

from datasets import Dataset


def expand_pairwise(dataset: Dataset) -> Dataset:
    """Expand each APO row (one chosen, K rejected) into K DPO rows ``(prompt, chosen, rejected_k)``.

    Images (``images``) and identifiers are copied to every pair; ``rejected_teacher`` names the pair's teacher.
    The result is what stock ``trl.DPOTrainer`` expects.
    """
    keep = [c for c in dataset.column_names if c not in ("rejected", "rejected_teachers", "rejected_weights")]

    def explode(batch: dict) -> dict:
        out = {c: [] for c in keep}
        out["rejected"], out["rejected_teacher"] = [], []
        for i in range(len(batch["rejected"])):
            teachers = batch.get("rejected_teachers", [None] * len(batch["rejected"]))[i] or []
            for k, rej in enumerate(batch["rejected"][i]):
                for c in keep:
                    out[c].append(batch[c][i])
                out["rejected"].append(rej)
                out["rejected_teacher"].append(teachers[k] if k < len(teachers) else f"negative_{k}")
        return out

    return dataset.map(explode, batched=True, remove_columns=dataset.column_names, desc="Expanding to pairs")
