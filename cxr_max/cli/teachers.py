"""``cxr-max serve-teachers`` and ``cxr-max distill``: the simulated teachers' server, and trajectory collection."""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cxr_max.cli.options import many, opt, shard

TASKS = ("diagnose", "explain", "report")
API_KEY_ENV = "CXR_MAX_SIM_API_KEY"


@dataclass
class ServeTeachersArguments:
    """Serve the simulated drifting teachers over an OpenAI-compatible API on 127.0.0.1 (for tests and the demo)."""

    port: int = opt(8765, "Port on 127.0.0.1; 0 picks a free one (printed).")
    root: Path | None = opt(None, "Synthetic root (default: the embedded one, built if needed).")
    seed: int = opt(0, "Synthetic world seed (also the teachers' sampling seed).")
    n_patients: int | None = opt(None, "Synthetic world size when building the default root.")
    api_key: str | None = opt(None, f"Require this bearer key (default: ${API_KEY_ENV} if set).")
    port_file: Path | None = opt(None, "Also write the bound port to this file.")
    delay_ms: float = opt(0.0, "Delay added to every answer (a slow teacher).")
    fault_429: float = opt(0.0, "Rate of 429 answers per attempt.")
    fault_500: float = opt(0.0, "Rate of 500 answers.")
    fault_malformed: float = opt(0.0, "Rate of 200 answers whose body is not JSON.")
    fault_drop: float = opt(0.0, "Rate of dropped connections.")
    fault_timeout: float = opt(0.0, "Rate of answers delayed past the client's timeout.")
    burst_429: int = opt(0, "Answer the first N requests with 429.")


def make_serve_teachers_parser(subparsers):
    return subparsers.add_parser("serve-teachers", help="Serve the simulated drifting teachers on 127.0.0.1.",
                                 description=ServeTeachersArguments.__doc__, dataclass_types=[ServeTeachersArguments])


def serve_teachers(args: ServeTeachersArguments) -> int:
    from cxr_max.teachers.server import FaultPlan, SimWorld, serve

    root = args.root
    if root is None:
        from cxr_max.sources import resolve_source

        root = resolve_source(seed=args.seed, synthetic_patients=args.n_patients, stage="serve-teachers").world
    world = SimWorld.from_root(root, seed=args.seed)
    faults = FaultPlan(rate_429=args.fault_429, rate_500=args.fault_500, rate_malformed=args.fault_malformed,
                       rate_drop=args.fault_drop, rate_timeout=args.fault_timeout, burst_429=args.burst_429,
                       delay_s=args.delay_ms / 1000.0)
    serve(world, port=args.port, faults=faults, api_key=args.api_key or os.environ.get(API_KEY_ENV),
          port_file=args.port_file, echo=lambda s: print(s, flush=True))
    return 0


@dataclass
class DistillArguments:
    """Collect teacher trajectories (resumable, sharded, fault tolerant) into canonical JSONL.

    Rerunning the same command resumes: what is on disk is skipped, failures are asked again. With the bundled
    "sim" registry the teachers are a `cxr-max serve-teachers` server (at $CXR_MAX_SIM_URL, default
    127.0.0.1:8765), or, with --serve_sim, a server this command starts in-process for the run.
    """

    out: Path = opt(help="Output folder (<out>/<teacher>/part-i-of-n.jsonl); reruns resume.")
    registry: str = opt("sim", 'Registry YAML path, or a bundled one: "sim", "vllm".')
    images: Path | None = opt(None, "MIMIC-CXR-JPG root (default: the embedded synthetic one).")
    task: list[str] = many(("diagnose",), "Task(s) (repeatable).", choices=TASKS)
    samples: int = opt(1, "Completions per (image, teacher, task); sent as the request seed.")
    shard: str = opt("0/1", "This process's share of the images, i/n.")
    teacher: list[str] = many((), "Only these teachers (repeatable); default all.")
    base_url: str | None = opt(None, "Point every teacher at this URL (e.g. the sim server's).")
    serve_sim: bool = opt(False, "With --registry sim and no --base_url: serve the simulated teachers in-process "
                                 "for this run (on a free port) instead of using a running serve-teachers.")
    sim_root: Path | None = opt(None, "Synthetic root the in-process server answers from (default: the embedded "
                                      "one, built with --seed).")
    allow_host: list[str] = many((), "Non-loopback host you control that may receive images (repeatable).")
    allow_remote: bool = opt(False, "Allow ANY endpoint (read PhysioNet's rules first).")
    retry_failed: bool = opt(True, "Ask again keys that only failed (--no_retry_failed: do not).")
    frontal_only: bool = opt(False, "Only PA/AP images.")
    limit: int | None = opt(None, "Only the first N images (before sharding).")
    seed: int = opt(0, "Seed of the default synthetic root.")
    summary_json: Path | None = opt(None, "Also write the summary here as JSON.")
    progress: bool = opt(True, "Show a progress bar (--no_progress: do not).")

    def __post_init__(self) -> None:
        shard(self.shard)

    @property
    def in_process(self) -> bool:
        return self.serve_sim and self.registry == "sim" and self.base_url is None


def make_distill_parser(subparsers):
    return subparsers.add_parser("distill", help="Collect teacher trajectories into JSONL.",
                                 description=DistillArguments.__doc__, dataclass_types=[DistillArguments])


def distill(args: DistillArguments) -> int:
    from rich.console import Console

    from cxr_max.teachers.collector import collect

    console = Console(stderr=True)
    sim_root = args.sim_root
    if args.images is None or (args.in_process and sim_root is None):
        from cxr_max.sources import resolve_source

        sim_root = sim_root or resolve_source(seed=args.seed, stage="distill").world
    images = args.images or sim_root / "mimic-cxr-jpg"
    kwargs = dict(tasks=tuple(args.task), samples=args.samples, shard=shard(args.shard), retry_failed=args.retry_failed,
                  teachers=args.teacher, allowed_hosts=args.allow_host, allow_remote=args.allow_remote,
                  frontal_only=args.frontal_only, limit=args.limit, progress=args.progress, console=console)
    if args.in_process:
        from cxr_max.teachers.server import run_sim_server

        with run_sim_server(root=sim_root, seed=args.seed) as server:
            summary = collect("sim", images, args.out, base_url=server.base_url, **kwargs)
    else:
        summary = collect(args.registry, images, args.out, base_url=args.base_url, **kwargs)
    summary.render(console)
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary.to_dict(), indent=2))
    return 0

