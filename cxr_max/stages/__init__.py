"""The method's stages as library functions, one module each, shared by ``recipes/*.py`` and the CLI.

======== =========================================================================================
learn    SFT of the student on the union of the teachers' trajectories (``SFTTrainer``)
compare  consensus positive + weighted teacher negatives per image, and the drift report
critique APO from the learn checkpoint (:class:`cxr_max.training.APOTrainer`)
dpo      the released recipe's pairwise DPO baseline (``trl.DPOTrainer``)
evaluate per-finding scores of a checkpoint or a teacher on a split
apo      the pipeline: learn -> compare -> critique -> table, calling the three stage functions
======== =========================================================================================

Each module holds its argument dataclass(es), ``DATACLASS_TYPES``, ``main(*parsed)`` (training stages also take
an in-process ``dataset=``) and ``make_parser(subparsers=None)`` in the pattern of TRL's own scripts (``trl
sft``): given a subparsers action whose ``parser_class`` is ``TrlParser`` it adds its command there, else it
returns a ``TrlParser``, so ``--config file.yaml`` works for every stage. Their data flags are TRL's
(:mod:`cxr_max.stages.data`); the stages that do not train send their summaries to the trackers of
``--report_to`` (:mod:`cxr_max.stages.tracking`); a pipeline builds a stage's dataclasses from its YAML and
values set in code with :func:`cxr_max.stages.config.from_config`.
"""

STAGES = ("learn", "compare", "critique", "dpo", "evaluate", "apo")
__all__ = ["STAGES"]
