"""Compare: a consensus positive and weighted teacher negatives per image (stage 2 of APO); the stage
is cxr_max.stages.compare.

    python recipes/compare.py --consensus vote --negative_weighting drift \
        --trajectories <folder> --data_dir <mimic-cxr-jpg root> --output_dir <folder>

Every flag also works from ``--config file.yaml``; ``--help`` lists them.
"""

from cxr_max.stages.compare import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
