"""Configuration of :class:`~cxr_max.training.APOTrainer`, following TRL's ``DPOConfig`` pattern."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig


@dataclass
class APOConfig(DPOConfig):
    r"""
    Configuration class for :class:`~cxr_max.training.APOTrainer` (multi-negative Plackett-Luce preference
    optimisation, the "critique" stage). It extends ``trl.DPOConfig``; every DPO/``TrainingArguments`` field keeps
    its meaning (``beta`` = reward temperature, default 0.1; ``max_length``; ``precompute_ref_log_probs``; ...).
    The pairwise ``loss_type`` of DPO is ignored: the loss is always the APO loss below.

    Parameters:
        > Parameters that control the loss

        ranking (`str`, *optional*, defaults to `"top1"`):
            `"top1"`: the paper's Plackett-Luce top-1 loss ``log(1 + sum_u w_u exp(r_u - r_+))``. `"full"`: the
            full-ranking Plackett-Luce likelihood of positive > rejected[0] > rejected[1] > ... (negatives with
            weight 0 take no part).
        full_ranking_by (`str`, *optional*, defaults to `"rejected_agreement"`):
            How `ranking="full"` orders each row's negatives. `"rejected_agreement"`: by their agreement with the
            consensus (the compare stage writes it per negative), highest first, unknown last; rows without the
            column are an error. `"given"`: the rows' order, for negatives you ordered best to worst yourself.
        use_negative_weights (`bool`, *optional*, defaults to `True`):
            Use the rows' `rejected_weights` (drift-aware weights from the compare stage). They are normalised to
            mean 1 over each row's negatives, so uniform weights (or rows without weights) give the paper's loss.
            `False` ignores them (uniform).
        nll_weight (`float`, *optional*, defaults to `0.0`):
            Weight of an extra per-token negative log-likelihood term on the positive (0 disables it).

        > Parameters that control the data

        max_negatives (`int`, *optional*, defaults to `7`):
            Most negatives per prompt (the seven CXR-MAX teachers). Rows with more are handled by
            `truncate_negatives`.
        truncate_negatives (`bool`, *optional*, defaults to `False`):
            `False`: a row with more than `max_negatives` negatives is bad input (error naming the row, or a counted
            skip under `on_error="skip"`). `True`: keep its first `max_negatives` negatives and count the truncation.
        on_error (`str`, *optional*, defaults to `"raise"`):
            Bad rows (no negatives, empty completions, too many negatives, every negative identical to the
            positive): `"raise"` stops with an error naming the dataset and row; `"skip"` drops the row and counts it
            (summary printed before training). A negative identical to the positive is always dropped from its row
            and counted (it would push the positive down against itself).

        max_truncated_share (`float`, *optional*, defaults to `0.02`):
            Sequences longer than `max_length` lose the end of their completion -- where a trajectory states its
            final answer, the part in which the candidates differ. Each cut is counted (`truncated_sequences`) and
            training stops with an error naming the rows once more than this share of the sequences seen so far
            was cut (checked from the 50th sequence on; 1.0 disables the check). A prompt (with its image tokens)
            longer than `max_length` is always an error: image tokens are never cut.

        > Parameters that control speed

        shared_prefix (`bool` or `None`, *optional*, defaults to `None`):
            Forward each row's prompt (and image) once for all its ``1 + K`` candidates: one packed sequence
            ``[prompt | c_0 | ... | c_K]`` with a block attention mask (each candidate sees the prompt and itself)
            and positions continuing from the prompt (M-RoPE for Qwen2.5-VL), for the policy, the live reference
            and the precomputed-reference pass. Log-probs equal the per-candidate path's up to float rounding.
            `None`: on wherever supported (Llama, LLaVA with a Llama text model, Qwen2.5-VL; SDPA or eager
            attention), else the per-candidate path with one message saying why. `True`: required (error where
            unsupported). `False`: always the per-candidate path.

        > Parameters that control the reference model

        ref_model_path (`str`, *optional*):
            Folder of the reference (learn-stage) model to load as a frozen copy. Must exist and share the policy's
            vocabulary size, or the trainer stops with a clear error. Default: TRL's behaviour (the PEFT adapter
            disabled, the precomputed log-probs, or a copy of the policy's starting checkpoint).
        ref_logps_path (`str`, *optional*):
            Parquet file caching the precomputed reference log-probs (with `precompute_ref_log_probs=True`).
            Default: `<output_dir>/ref_logps_<split>.parquet`. An existing file is reused when its fingerprint (policy
            weights + dataset) matches, and is an error when it does not.
    """

    ranking: str = field(
        default="top1",
        metadata={"help": "Plackett-Luce loss: 'top1' (the paper) or 'full' (negatives ordered best to worst).",
                  "choices": ["top1", "full"]},
    )
    use_negative_weights: bool = field(
        default=True,
        metadata={"help": "Use rows' rejected_weights (normalised to mean 1 per row; uniform == the paper's loss)."},
    )
    nll_weight: float = field(default=0.0, metadata={"help": "Weight of a per-token NLL term on the positive."})
    full_ranking_by: str = field(
        default="rejected_agreement",
        metadata={"help": "Order of the negatives for ranking='full': 'rejected_agreement' (agreement with the "
                          "consensus, highest first) or 'given' (the rows' order).",
                  "choices": ["rejected_agreement", "given"]},
    )
    max_truncated_share: float = field(
        default=0.02,
        metadata={"help": "Stop when more than this share of sequences had the end of their completion cut by "
                          "max_length (1.0: never)."},
    )
    max_negatives: int = field(default=7, metadata={"help": "Most negatives per prompt."})
    truncate_negatives: bool = field(
        default=False,
        metadata={"help": "Truncate rows with more than max_negatives negatives (counted) instead of rejecting them."},
    )
    on_error: str = field(
        default="raise",
        metadata={"help": "Bad rows: 'raise' (error naming the row) or 'skip' (counted).", "choices": ["raise", "skip"]},
    )
    shared_prefix: bool | None = field(
        default=None,
        metadata={"help": "Forward each row's prompt and image once for all its candidates (block mask). None: "
                          "wherever supported; True: required; False: one sequence per candidate."},
    )
    ref_model_path: str | None = field(
        default=None, metadata={"help": "Folder of the reference (learn-stage) model; frozen copy."}
    )
    ref_logps_path: str | None = field(
        default=None, metadata={"help": "Parquet cache of precomputed reference log-probs."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.ranking not in ("top1", "full"):
            raise ValueError(f"ranking must be 'top1' or 'full', not {self.ranking!r}")
        if self.full_ranking_by not in ("rejected_agreement", "given"):
            raise ValueError(f"full_ranking_by must be 'rejected_agreement' or 'given', not {self.full_ranking_by!r}")
        if not 0.0 <= self.max_truncated_share <= 1.0:
            raise ValueError(f"max_truncated_share must be in [0, 1], got {self.max_truncated_share}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {self.on_error!r}")
        if self.max_negatives < 1:
            raise ValueError(f"max_negatives must be >= 1, got {self.max_negatives}")
        if self.nll_weight < 0:
            raise ValueError(f"nll_weight must be >= 0, got {self.nll_weight}")
