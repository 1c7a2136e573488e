"""Learn -> compare -> critique -> evaluate: the paper's method end to end; the pipeline is cxr_max.stages.apo.

    python recipes/apo.py                                  # embedded synthetic data, tiny student, CPU
    python recipes/apo.py --consensus dawid_skene --negative_weighting drift --output_dir outputs/apo-drift
    python recipes/apo.py --config my_apo.yaml             # every flag also works from YAML

Every flag also works from ``--config file.yaml``; ``--help`` lists them.
"""

from cxr_max.stages.apo import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
