"""Export builder configs to a Hub-ready folder (parquet shards + card): ``cxr-max export``, with the same flags.

    python builders/export_hub.py -o outputs/hub/cxr_max_export          # embedded synthetic data, all configs
    python builders/export_hub.py --data_dir /physionet/mimic-cxr-jpg/2.1.0 --trajectories traj/ \\
        -o outputs/hub/cxr_max_mimic                                      # MIMIC: ids + trajectories only

Then ``cxr-max push outputs/hub/cxr_max_mimic me/cxr-max-mimic`` (private by default; --dry_run lists the files).
"""

import sys

from cxr_max.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["export", *sys.argv[1:]]))
