"""Build step of the cxr_max wheel: files the project keeps outside the package are copied into it.

Two folders stay where the project keeps them, editable like any document, and a wheel carries a copy:

* the card templates ``hub_cards/*.md`` as ``cxr_max/hub/templates/*.md``, which :mod:`cxr_max.hub.cards`
  reads when the package is installed;
* the stage configs ``recipes/configs/*.yaml`` as ``cxr_max/stages/configs/*.yaml``, which
  :func:`cxr_max.stages.apo.config_dir` finds when the package is installed (the apo stage's default
  ``--learn_config`` / ``--critique_config``).

``pyproject.toml`` names :class:`BuildPy` as setuptools' ``build_py`` command; an editable install copies
nothing (it reads both folders from the checkout).
"""

from __future__ import annotations

from pathlib import Path

from setuptools.command.build_py import build_py

REPO = Path(__file__).resolve().parent
TEMPLATES = REPO / "hub_cards"
IN_PACKAGE = ("cxr_max", "hub", "templates")  # where the card templates go, inside the built package
CONFIGS = REPO / "recipes" / "configs"
CONFIGS_IN_PACKAGE = ("cxr_max", "stages", "configs")
# (source folder, file pattern, where in the package, what they are: for the error when none is found)
COPIES = ((TEMPLATES, "*.md", IN_PACKAGE, "card templates"), (CONFIGS, "*.yaml", CONFIGS_IN_PACKAGE, "stage configs"))


class BuildPy(build_py):
    """setuptools' ``build_py`` plus the copies of :data:`COPIES` (``hub_cards/*.md``, ``recipes/configs/*.yaml``)."""

    def _template_targets(self) -> list[tuple[Path, Path]]:
        if getattr(self, "editable_mode", False):
            return []
        out = []
        for folder, pattern, in_package, what in COPIES:
            sources = sorted(folder.glob(pattern))
            if not sources:
                raise FileNotFoundError(f"no {what} ({pattern}) in {folder}: the wheel would have none")
            target = Path(self.build_lib, *in_package)
            out += [(src, target / src.name) for src in sources]
        return out

    def run(self) -> None:
        super().run()
        for src, dst in self._template_targets():
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [str(dst) for _, dst in self._template_targets()]
