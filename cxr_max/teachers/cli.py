"""``cxr-max serve-teachers`` and ``cxr-max distill``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise typer.BadParameter(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise typer.BadParameter(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return i, n


def serve_teachers(
    port: int = typer.Option(8765, help="Port on 127.0.0.1; 0 picks a free one (printed)."),
    root: Optional[Path] = typer.Option(None, help="Synthetic root (default: the embedded one, built if needed)."),
    seed: int = typer.Option(0, help="Synthetic world seed (also the teachers' sampling seed)."),
    n_patients: Optional[int] = typer.Option(None, help="Synthetic world size when building the default root."),
    api_key: Optional[str] = typer.Option(None, envvar="CXR_MAX_SIM_API_KEY", help="Require this bearer key."),
    port_file: Optional[Path] = typer.Option(None, help="Also write the bound port to this file."),
    delay_ms: float = typer.Option(0.0, help="Delay added to every answer (a slow teacher)."),
    fault_429: float = typer.Option(0.0, help="Rate of 429 answers per attempt."),
    fault_500: float = typer.Option(0.0, help="Rate of 500 answers."),
    fault_malformed: float = typer.Option(0.0, help="Rate of 200 answers whose body is not JSON."),
    fault_drop: float = typer.Option(0.0, help="Rate of dropped connections."),
    fault_timeout: float = typer.Option(0.0, help="Rate of answers delayed past the client's timeout."),
    burst_429: int = typer.Option(0, help="Answer the first N requests with 429."),
) -> None:
    """Serve the simulated drifting teachers over an OpenAI-compatible API on 127.0.0.1 (for tests and the demo)."""
    from cxr_max.teachers.server import FaultPlan, SimWorld, serve

    if root is None and n_patients is not None:
        from cxr_max.synthetic import ensure_synthetic

        root = Path(ensure_synthetic(seed=seed, n_patients=n_patients))
    world = SimWorld.from_root(root, seed=seed)
    faults = FaultPlan(rate_429=fault_429, rate_500=fault_500, rate_malformed=fault_malformed, rate_drop=fault_drop,
                       rate_timeout=fault_timeout, burst_429=burst_429, delay_s=delay_ms / 1000.0)
    serve(world, port=port, faults=faults, api_key=api_key, port_file=port_file,
          echo=lambda s: print(s, flush=True))


def distill(
    out: Path = typer.Option(..., help="Output folder (<out>/<teacher>/part-i-of-n.jsonl); reruns resume."),
    registry: str = typer.Option("sim", help='Registry YAML path, or a bundled one: "sim", "vllm".'),
    images: Optional[Path] = typer.Option(None, help="MIMIC-CXR-JPG root (default: the embedded synthetic one)."),
    task: list[str] = typer.Option(["diagnose"], help="Task(s): diagnose, explain, report (repeat the option)."),
    samples: int = typer.Option(1, help="Completions per (image, teacher, task); sent as the request seed."),
    shard: str = typer.Option("0/1", help="This process's share of the images, i/n."),
    teacher: list[str] = typer.Option([], help="Only these teachers (repeat); default all."),
    base_url: Optional[str] = typer.Option(None, help="Point every teacher at this URL (e.g. the sim server's)."),
    allow_host: list[str] = typer.Option([], help="Non-loopback host you control that may receive images."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow ANY endpoint (read PhysioNet's rules first)."),
    retry_failed: bool = typer.Option(True, "--retry-failed/--no-retry-failed", help="Ask again keys that only failed."),
    frontal_only: bool = typer.Option(False, "--frontal-only", help="Only PA/AP images."),
    limit: Optional[int] = typer.Option(None, help="Only the first N images (before sharding)."),
    seed: int = typer.Option(0, help="Seed of the default synthetic root."),
    summary_json: Optional[Path] = typer.Option(None, help="Also write the summary here as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Collect teacher trajectories (resumable, sharded, fault tolerant) into canonical JSONL."""
    from cxr_max.errors import DataError
    from cxr_max.teachers.collector import collect
    from cxr_max.teachers.guard import ComplianceError

    console = Console(stderr=True)
    if images is None:
        from cxr_max.synthetic import ensure_synthetic

        images = Path(ensure_synthetic(seed=seed)) / "mimic-cxr-jpg"
    try:
        summary = collect(registry, images, out, tasks=tuple(task), samples=samples, shard=_parse_shard(shard),
                          retry_failed=retry_failed, teachers=teacher, base_url=base_url, allowed_hosts=allow_host,
                          allow_remote=allow_remote, frontal_only=frontal_only, limit=limit, progress=progress,
                          console=console)
    except (ComplianceError, DataError, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    summary.render(console)
    if summary_json:
        summary_json.write_text(json.dumps(summary.to_dict(), indent=2))


def register(app: typer.Typer) -> None:
    """Add ``serve-teachers`` and ``distill`` to the ``cxr-max`` command."""
    app.command("serve-teachers")(serve_teachers)
    app.command("distill")(distill)
