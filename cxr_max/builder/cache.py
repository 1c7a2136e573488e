"""The code part of the cache key: a fingerprint of every module a build reads.

``datasets`` names a build's cache folder after the builder's ``hash``; :class:`~cxr_max.builder.CxrMax`
passes :func:`loaded_code_digest`, so a fix in any module a build reads rebuilds, and both entry points
(``cxr_max.load_dataset``, ``datasets.load_dataset("cxr_max")``) name one folder.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

# What a build reads, relative to the cxr_max package folder.
CODE_PACKAGES = ("builder", "mimic", "trajectories", "synthetic")
CODE_FILES = ("labels.py", "errors.py", "sources.py")


def package_folder() -> Path:
    """The cxr_max folder this package was imported from (the folder above ``cxr_max/builder/``)."""
    return Path(__file__).resolve().parents[1]


def code_digest() -> str:
    """A fingerprint of every module a build reads (:data:`CODE_PACKAGES`, :data:`CODE_FILES`)."""
    root = package_folder()
    files = [root / f for f in CODE_FILES if (root / f).is_file()]
    files += sorted(p for pkg in CODE_PACKAGES for p in (root / pkg).glob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


@functools.cache
def loaded_code_digest() -> str:
    """:func:`code_digest` of the code this process imported (computed once): both entry points use it,
    so an edit made after import cannot give them two different cache folders."""
    return code_digest()
