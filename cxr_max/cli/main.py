"""The ``cxr-max`` command: one argparse parser, one subcommand per entry of :data:`COMMANDS`, one error handler.

Every subcommand follows the pattern of TRL's own training scripts and ``trl`` command: its module has
``make_parser(subparsers)``, which returns ``subparsers.add_parser(name, help=..., dataclass_types=...)`` (a
``trl.TrlParser``), and a main function called with the parsed dataclasses. So every option is accepted as
``--foo_bar`` and ``--foo-bar``, every command reads ``--config file.yaml`` (YAML keys are the field names; command
line flags override them), and ``Literal`` options are argparse choices checked before any work starts.

The modules are imported only when their command runs, so ``cxr-max --help`` stays fast and lists the training
stages (:data:`STAGES`, in ``cxr_max.stages``) without importing torch.

Exit status: 0 on success; 2 for a usage error (unknown command or option, invalid choice, an option check that
fails); 1 for any other error, printed as one line on stderr (a :class:`cxr_max.errors.DataError` names the file
and row). ``cxr-max --debug <command> ...`` prints the full traceback instead; ``--debug`` is a global flag and goes
before the command (after it, a training stage reads ``--debug`` as ``TrainingArguments.debug``).
"""

import argparse
import dataclasses
import importlib
import sys
import traceback
from collections.abc import Sequence

from cxr_max.cli.options import check_choices

PROG = "cxr-max"
STAGE_PACKAGE = "cxr_max.stages"


class MissingCommand(RuntimeError):
    """A listed stage whose module this installation lacks."""


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: the module that defines it, and the names of its parser and main functions there."""

    name: str
    module: str
    help: str
    make_parser: str = "make_parser"
    main: str = "main"


# The training stages: cxr_max/stages/<name>.py each has make_parser(subparsers=None) and main(*dataclasses).
STAGES = (
    Command("learn", f"{STAGE_PACKAGE}.learn", "Stage 1: supervised learning of the student on the teachers' trajectories."),
    Command("compare", f"{STAGE_PACKAGE}.compare", "Stage 2: consensus positives and weighted teacher negatives per image."),
    Command("critique", f"{STAGE_PACKAGE}.critique", "Stage 3: APO (multi-negative preference optimisation) from learn."),
    Command("dpo", f"{STAGE_PACKAGE}.dpo", "Baseline: pairwise DPO on the same preference rows."),
    Command("evaluate", f"{STAGE_PACKAGE}.evaluate", "Evaluate a checkpoint or a teacher's trajectories on a split."),
    Command("apo", f"{STAGE_PACKAGE}.apo", "Learn -> compare -> critique -> evaluate in one run."),
)

COMMANDS = (
    Command("synth", "cxr_max.cli.data", "Build the embedded synthetic MIMIC-CXR (+ simulated teachers).",
            "make_synth_parser", "synth"),
    Command("validate", "cxr_max.cli.data", "Check a MIMIC-CXR root and a trajectory folder.",
            "make_validate_parser", "validate"),
    Command("info", "cxr_max.cli.data", "Counts per builder config, split and teacher.", "make_info_parser", "info"),
    Command("serve-teachers", "cxr_max.cli.teachers",
            "Serve the simulated drifting teachers on 127.0.0.1 (OpenAI-compatible).",
            "make_serve_teachers_parser", "serve_teachers"),
    Command("distill", "cxr_max.cli.teachers", "Collect teacher trajectories (resumable, sharded) into JSONL.",
            "make_distill_parser", "distill"),
    Command("drift-report", "cxr_max.cli.drift", "Write a drift report folder and print a per-teacher table.",
            "make_drift_report_parser", "drift_report"),
    Command("export", "cxr_max.cli.hub", "Export builder configs to parquet shards + a dataset card.",
            "make_export_parser", "export"),
    Command("push", "cxr_max.cli.hub", "Push an export or a checkpoint to the Hub in one commit (private by default).",
            "make_push_parser", "push"),
    *STAGES,
)
BY_NAME = {c.name: c for c in COMMANDS}


def _subparsers(parser: argparse.ArgumentParser):
    """Subparsers that are ``trl.TrlParser`` s, so ``add_parser(name, dataclass_types=...)`` works."""
    from trl import TrlParser

    return parser.add_subparsers(title="commands", dest="command", metavar="<command>", parser_class=TrlParser)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the global flags and every command's name and help (no command module imported)."""
    from cxr_max import __version__

    parser = argparse.ArgumentParser(
        prog=PROG, allow_abbrev=False,
        description="cxr_max: multi-teacher CXR distillation toolkit. `cxr-max <command> --help` lists a "
                    "command's options; every option is accepted as --foo_bar or --foo-bar, and "
                    "`--config file.yaml` sets any of them.")
    parser.add_argument("--debug", action="store_true", help="Print the full traceback of an error.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="<command>")
    for command in COMMANDS:
        subparsers.add_parser(command.name, help=command.help, add_help=False)
    return parser


def command_parser(command: Command):
    """Import ``command``'s module and build its TrlParser (prog ``cxr-max <name>``) with its ``make_parser``."""
    module = importlib.import_module(command.module)
    parser = getattr(module, command.make_parser)(_subparsers(argparse.ArgumentParser(prog=PROG)))
    return parser, getattr(module, command.main)


def parse_command(parser, argv: Sequence[str]) -> tuple:
    """Parse ``argv`` (with ``--config``) into the command's dataclasses; a failed option check exits 2."""
    try:
        *parsed, unknown = parser.parse_args_and_config(list(argv), return_remaining_strings=True)
        for obj in parsed:
            if dataclasses.is_dataclass(obj):
                check_choices(obj)
    except ValueError as e:  # a dataclass __post_init__ check, or a --config value outside its choices
        parser.exit(2, f"{parser.prog}: error: {_text(e)}\n")  # one line: a stage's usage is a screenful
    if unknown:  # from the command line or from the --config file
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(parsed)


def _split(argv: Sequence[str]) -> tuple[list[str], str | None, list[str]]:
    """Global flags, the command name and the command's own arguments."""
    for i, token in enumerate(argv):
        if not token.startswith("-"):
            return list(argv[:i]), token, list(argv[i + 1:])
    return list(argv), None, []


def _text(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def one_line(error: BaseException) -> str:
    """The message the handler prints: the project's own errors as they are, others with their type's name."""
    text = _text(error)
    if type(error).__module__.split(".")[0] == "cxr_max":
        return text or type(error).__name__
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cxr-max``; return the exit status (``[project.scripts]`` passes it to ``sys.exit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    head, name, rest = _split(argv)
    flags = parser.parse_args(head)  # -h, --version, --debug; an unknown global flag exits 2
    if name is None:
        parser.print_help()
        return 0
    if name not in BY_NAME:
        parser.parse_args([*head, name])  # argparse's "invalid choice" message, exit 2
    command = BY_NAME[name]
    try:
        try:
            sub, run = command_parser(command)
        except ModuleNotFoundError as e:
            if command in STAGES and e.name in (command.module, STAGE_PACKAGE):
                raise MissingCommand(f"{PROG} {name}: {command.module} is not in this installation") from e
            raise
        parsed = parse_command(sub, rest)
        status = run(*parsed)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one error handler of the command line
        if flags.debug:
            traceback.print_exc()
        else:
            print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    return status if type(status) is int else 0  # a stage's main returns its result (a folder, metrics)
