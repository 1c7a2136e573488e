"""Collect CXR-MAX-style reasoning trajectories from several teachers (resumable, sharded):
``cxr-max distill --serve_sim``, with the same flags.

    # the embedded default: simulated teachers served in-process, synthetic MIMIC-CXR-JPG
    python builders/distill_teachers.py --out outputs/trajectories

    # your own teachers (one vLLM server each, see cxr_max/teachers/registries/vllm.yaml)
    python builders/distill_teachers.py --registry vllm --images /data/mimic-cxr-jpg --out runs/cxr-max \
        --task explain --shard 0/4

``--serve_sim`` starts the simulated teachers in-process only with the bundled "sim" registry and no
--base_url. Rerunning the same command resumes: what is on disk is skipped, failures are asked again.
"""

import sys

from cxr_max.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["distill", "--serve_sim", *sys.argv[1:]]))
