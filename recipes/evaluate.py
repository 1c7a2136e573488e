"""Evaluate a checkpoint or a teacher per finding on a split; the stage is cxr_max.stages.evaluate.

    python recipes/evaluate.py --model_name_or_path outputs/apo/critique             # a student, test split
    python recipes/evaluate.py --teacher sim-glm-4.5v                                # a teacher's trajectories
    python recipes/evaluate.py --model_name_or_path outputs/apo/critique --dataset_config ms_cxr_t   # temporal pairs

Every flag also works from ``--config file.yaml``; ``--help`` lists them.
"""

from cxr_max.stages.evaluate import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
