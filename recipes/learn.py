"""Learn: supervised bootstrapping of the student (stage 1 of APO); the stage is cxr_max.stages.learn.

    python recipes/learn.py --config recipes/configs/learn_tiny.yaml            # embedded default, CPU
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/learn.py \
        --config recipes/configs/learn_qwen25vl_7b.yaml --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct

Every flag also works from ``--config file.yaml``; ``--help`` lists them.
"""

from cxr_max.stages.learn import main, make_parser

if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
