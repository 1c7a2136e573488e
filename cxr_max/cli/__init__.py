"""The ``cxr-max`` command line; ``[project.scripts]`` runs :func:`cxr_max.cli.main.main`.

``main.py`` holds the parser, the command list and the error handler; ``data.py`` (synth, validate, info),
``teachers.py`` (serve-teachers, distill), ``drift.py`` (drift-report) and ``hub.py`` (export, push) define the
commands, each an option dataclass plus a function that calls the library. The training stages are the modules
of ``cxr_max.stages``.
"""
