"""Build step of the cxr_max wheel: the card templates of the top-level ``hub_cards/`` go into the package.

``hub_cards/`` stays where the project keeps it (next to ``cxr_max/``, editable like any document); a wheel
carries a copy as ``cxr_max/hub/templates/*.md``, which :mod:`cxr_max.hub.cards` reads when the package
is installed. ``pyproject.toml`` names :class:`BuildPy` as setuptools' ``build_py`` command; an editable
install copies nothing (it reads ``hub_cards/`` from the checkout).
"""

from __future__ import annotations

from pathlib import Path

from setuptools.command.build_py import build_py

TEMPLATES = Path(__file__).resolve().parent / "hub_cards"
IN_PACKAGE = ("cxr_max", "hub", "templates")  # where the copies go, inside the built package


class BuildPy(build_py):
    """setuptools' ``build_py`` plus a copy of ``hub_cards/*.md`` into ``cxr_max/hub/templates/``."""

    def _template_targets(self) -> list[tuple[Path, Path]]:
        if getattr(self, "editable_mode", False):
            return []
        sources = sorted(TEMPLATES.glob("*.md"))
        if not sources:
            raise FileNotFoundError(f"no card templates (*.md) in {TEMPLATES}: the wheel would have none")
        target = Path(self.build_lib, *IN_PACKAGE)
        return [(src, target / src.name) for src in sources]

    def run(self) -> None:
        super().run()
        for src, dst in self._template_targets():
            self.mkpath(str(dst.parent))
            self.copy_file(str(src), str(dst))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return super().get_outputs(include_bytecode) + [str(dst) for _, dst in self._template_targets()]
