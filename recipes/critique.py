"""Critique: APO from the learn checkpoint (stage 3); the stage is cxr_max.stages.critique.

    python recipes/critique.py --config recipes/configs/critique_tiny.yaml \
        --model_name_or_path outputs/learn --preferences outputs/compare
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/critique.py \
        --config recipes/configs/critique_qwen25vl_7b.yaml --model_name_or_path outputs/learn

Every flag also works from ``--config file.yaml``; ``--help`` lists them.
"""

from cxr_max.stages.critique import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
