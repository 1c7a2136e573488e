"""The released recipe's pairwise DPO, as a baseline to critique; the stage is cxr_max.stages.dpo.

    python recipes/dpo_baseline.py --config recipes/configs/dpo_baseline_tiny.yaml --model_name_or_path outputs/learn

Every flag also works from ``--config file.yaml``; ``--help`` lists them.
"""

from cxr_max.stages.dpo import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
