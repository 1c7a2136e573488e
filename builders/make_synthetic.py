"""Build the embedded synthetic MIMIC-CXR (images, DICOM, reports, tables, MS-CXR-T pairs, truth and the
seven simulated teachers' trajectories): ``cxr-max synth``, with the same flags.

    python builders/make_synthetic.py --out /tmp/synth --n_patients 160
    python builders/make_synthetic.py --n_images 24426 --pixels none      # CXR-MAX scale
"""

import sys

from cxr_max.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main(["synth", *sys.argv[1:]]))
