"""Build the embedded synthetic MIMIC-CXR (images, DICOM, reports, tables, MS-CXR-T pairs, truth and the
seven simulated teachers' trajectories). A thin wrapper over cxr_max.synthetic.ensure_synthetic.

    python builders/make_synthetic.py --out /tmp/synth --n-patients 160
    python builders/make_synthetic.py --n-images 24426 --pixels none      # CXR-MAX scale
"""

import typer

from cxr_max.commands_synth import synth

if __name__ == "__main__":
    typer.run(synth)
