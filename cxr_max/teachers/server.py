"""A local OpenAI-compatible server for the simulated drifting teachers (``cxr-max serve-teachers``).

Endpoints (on 127.0.0.1 only): ``GET /v1/models`` (one model id per simulated teacher, with its
``version``), ``POST /v1/chat/completions``, ``GET /health``, and ``POST /admin/faults`` to change the
fault plan of a running server (tests).

How a request becomes a completion:

- the image (an ``image_url`` data URL) is mapped to its dicom_id by hashing the decoded JPG bytes
  (the map is built once from the synthetic root's JPGs);
- the task is ``metadata.task`` when the body has it, else recognised from the prompt text (the
  templates of :mod:`cxr_max.trajectories.prompts` are known);
- the sample index is ``metadata.sample`` when given, else the request's ``seed`` (what the
  collector sends), else 0;
- the teacher's ``respond(truth, task=..., sample=..., seed=<server seed>)`` gives the text;
- ``usage`` counts are whitespace tokens (``prompt_tokens``: the prompt's words plus
  :data:`IMAGE_TOKENS` per image; ``completion_tokens``: the completion's words). A completion longer
  than ``max_tokens`` words is cut there with ``finish_reason="length"``, as a real server would.

Faults (:class:`FaultPlan`) are decided per request from a hash of (model, image, task, sample,
attempt), so they are reproducible, and each request key is faulted at most ``max_faults_per_key``
times, so a client that retries enough always finishes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import hashlib
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from cxr_max.mimic import jpg_relpath
from cxr_max.teachers.prompts import detect_task

IMAGE_TOKENS = 256  # nominal prompt tokens per image in the usage counts
FAULT_KINDS = ("429", "500", "malformed", "drop", "timeout", "empty")


@dataclasses.dataclass
class FaultPlan:
    """Which faults to inject. Rates are per request attempt, in [0, 1], summed in FAULT_KINDS order."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_malformed: float = 0.0   # 200 with a body that is not JSON
    rate_drop: float = 0.0        # the connection is closed without an answer
    rate_timeout: float = 0.0     # the answer waits ``timeout_delay_s`` (longer than the client's timeout)
    rate_empty: float = 0.0       # 200 with an empty completion (not retried by clients: a recorded failure)
    burst_429: int = 0            # the next N requests all get 429, then the rates apply again
    retry_after_s: float | None = None  # sent with 429s
    timeout_delay_s: float = 5.0
    delay_s: float = 0.0          # added to every answer (a slow teacher)
    max_faults_per_key: int = 2
    seed: int = 0

    def pick(self, key: str, attempt: int) -> str | None:
        """The fault (or None) for the ``attempt``-th request of ``key``."""
        if attempt >= self.max_faults_per_key:
            return None
        u = int.from_bytes(hashlib.blake2b(f"{self.seed}|{key}|{attempt}".encode(), digest_size=8).digest(), "big")
        u /= 2.0**64
        edge = 0.0
        for kind in FAULT_KINDS:
            edge += getattr(self, f"rate_{kind}")
            if u < edge:
                return kind
        return None


class SimWorld:
    """The teachers, the ground truth, and the image-hash -> dicom_id map the server answers from."""

    def __init__(self, teachers: Mapping[str, Any], truth: Mapping[str, Any], image_index: Mapping[str, str],
                 seed: int = 0):
        self.teachers, self.truth, self.image_index, self.seed = dict(teachers), dict(truth), dict(image_index), seed

    @staticmethod
    def digest(data: bytes) -> str:
        return hashlib.blake2b(data, digest_size=16).hexdigest()

    @classmethod
    def from_root(cls, root: str | Path | None = None, *, seed: int = 0, teachers: Mapping[str, Any] | None = None
                  ) -> "SimWorld":
        """The world of a synthetic root (None: the embedded synthetic world of ``seed``, from
        :func:`cxr_max.sources.resolve_source`)."""
        from cxr_max import synthetic
        from cxr_max.sources import resolve_source

        root = Path(root) if root is not None else resolve_source(seed=seed, stage="teacher server").world
        truth = synthetic.load_truth(root)
        jpg_root = root / "mimic-cxr-jpg"
        index = {}
        for t in truth.values():
            path = Path(jpg_root) / jpg_relpath(t.subject_id, t.study_id, t.dicom_id)
            if path.is_file():
                index[cls.digest(path.read_bytes())] = t.dicom_id
        return cls(teachers if teachers is not None else synthetic.SIM_TEACHERS, truth, index, seed)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


class SimTeacherServer:
    """The aiohttp application; run it with :func:`run_sim_server` (thread) or :func:`serve` (blocking)."""

    def __init__(self, world: SimWorld, faults: FaultPlan | None = None, api_key: str | None = None):
        self.world = world
        self.faults = faults or FaultPlan()
        self.api_key = api_key
        self.attempts: collections.Counter = collections.Counter()
        self.stats: collections.Counter = collections.Counter()
        self._burst_left = self.faults.burst_429

    def set_faults(self, faults: FaultPlan) -> None:
        self.faults, self._burst_left = faults, faults.burst_429
        self.attempts.clear()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/health", self.health)
        app.router.add_post("/admin/faults", self.admin_faults)
        return app

    def _authorised(self, request: web.Request) -> bool:
        return self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "teachers": len(self.world.teachers)})

    async def admin_faults(self, request: web.Request) -> web.Response:
        try:
            self.set_faults(FaultPlan(**(await request.json())))
        except (TypeError, ValueError) as e:
            return _error(400, f"bad fault plan: {e}")
        return web.json_response(dataclasses.asdict(self.faults))

    async def models(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _error(401, f"Incorrect API key provided: {request.headers.get('Authorization', '')}",
                          "authentication_error")
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "cxr_max-sim",
                 "version": getattr(t, "version", "0")} for name, t in self.world.teachers.items()]
        return web.json_response({"object": "list", "data": data})

    def _parse(self, body: dict) -> tuple[str, Any, str, int, str, int, str]:
        model = body.get("model")
        if model not in self.world.teachers:
            raise web.HTTPNotFound(text=json.dumps({"error": {"message": f"model {model!r} does not exist", "code": 404}}),
                                   content_type="application/json")
        texts, images = [], []
        for msg in body.get("messages") or []:
            if not isinstance(msg, dict) or msg.get("role") != "user":
                continue
            content = msg.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
            for part in parts:
                if part.get("type") == "text":
                    texts.append(part.get("text", ""))
                elif part.get("type") == "image_url":
                    images.append((part.get("image_url") or {}).get("url", ""))
        if len(images) != 1:
            raise ValueError(f"expected exactly one image in the user message, got {len(images)}")
        header, _, payload = images[0].partition(",")
        if not header.startswith("data:") or ";base64" not in header:
            raise ValueError("the image must be a base64 data URL (data:image/jpeg;base64,...)")
        try:
            digest = SimWorld.digest(base64.b64decode(payload, validate=True))
        except binascii.Error:
            raise ValueError("the image data URL is not valid base64") from None
        dicom_id = self.world.image_index.get(digest)
        if dicom_id is None:
            raise ValueError("unknown image: not one of the synthetic world's JPGs")
        prompt = " ".join(texts)
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        task = meta.get("task") or detect_task(prompt)
        if task is None:
            raise ValueError("cannot tell the task from the prompt; pass metadata.task")
        sample = int(meta.get("sample", body.get("seed") or 0))
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 1 << 30)
        return model, self.world.teachers[model], dicom_id, sample, task, max_tokens, prompt

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.stats["requests"] += 1
        if not self._authorised(request):  # echoes the key it got, as some real services do
            return _error(401, f"Incorrect API key provided: {request.headers.get('Authorization', '')}",
                          "authentication_error")
        try:
            body = await request.json()
            model, teacher, dicom_id, sample, task, max_tokens, prompt = self._parse(body)
        except web.HTTPException:
            raise
        except (ValueError, TypeError, AttributeError) as e:
            self.stats["bad_request"] += 1
            return _error(400, str(e))
        plan = self.faults
        if self._burst_left > 0:
            self._burst_left -= 1
            self.stats["fault_429"] += 1
            return self._too_many(plan)
        key = f"{model}|{dicom_id}|{task}|{sample}"
        attempt = self.attempts[key]
        self.attempts[key] += 1
        fault = plan.pick(key, attempt)
        if fault:
            self.stats[f"fault_{fault}"] += 1
        if plan.delay_s:
            await asyncio.sleep(plan.delay_s)
        if fault == "429":
            return self._too_many(plan)
        if fault == "500":
            return _error(500, "simulated internal error", "server_error")
        if fault == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError()
        if fault == "timeout":
            await asyncio.sleep(plan.timeout_delay_s)
        if fault == "malformed":
            return web.Response(text='{"id": "chatcmpl-x", "choices": [{"message": {"content": "<think', status=200,
                                content_type="application/json")
        text = "" if fault == "empty" else teacher.respond(self.world.truth[dicom_id], task=task, sample=sample,
                                                           seed=self.world.seed)
        words = text.split()
        finish = "stop"
        if len(words) > max_tokens:
            text, finish = " ".join(words[:max_tokens]), "length"
            words = words[:max_tokens]
        self.stats["ok"] += 1
        return web.json_response({
            "id": f"chatcmpl-{hashlib.blake2b(key.encode(), digest_size=6).hexdigest()}",
            "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt.split()) + IMAGE_TOKENS, "completion_tokens": len(words),
                      "total_tokens": len(prompt.split()) + IMAGE_TOKENS + len(words)},
        })

    @staticmethod
    def _too_many(plan: FaultPlan) -> web.Response:
        resp = _error(429, "simulated rate limit", "rate_limit_error")
        if plan.retry_after_s is not None:
            resp.headers["Retry-After"] = f"{plan.retry_after_s:g}"
        return resp


@dataclasses.dataclass
class ServerHandle:
    """A running in-process server: its URL, and the server object (faults, stats)."""

    server: SimTeacherServer
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def set_faults(self, faults: FaultPlan) -> None:
        self.server.set_faults(faults)


def _check_host(host: str) -> None:
    from cxr_max.teachers.guard import is_loopback

    if not is_loopback(host):
        raise ValueError(f"the simulated teacher server binds loopback only, not {host!r}")


@contextlib.contextmanager
def run_sim_server(world: SimWorld | None = None, *, root: str | Path | None = None, seed: int = 0,
                   faults: FaultPlan | None = None, api_key: str | None = None, host: str = "127.0.0.1",
                   port: int = 0) -> Iterator[ServerHandle]:
    """Run the simulated teacher server in a background thread on a free port (tests, the demo)."""
    _check_host(host)
    world = world or SimWorld.from_root(root, seed=seed)
    server = SimTeacherServer(world, faults, api_key)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def start() -> None:
        runner = web.AppRunner(server.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        box["runner"] = runner
        box["port"] = runner.addresses[0][1]

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(box["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=main, name="sim-teacher-server", daemon=True)
    thread.start()
    ready.wait()
    if "error" in box:
        raise box["error"]
    try:
        yield ServerHandle(server, host, box["port"])
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def serve(world: SimWorld, *, host: str = "127.0.0.1", port: int = 8765, faults: FaultPlan | None = None,
          api_key: str | None = None, port_file: str | Path | None = None, echo=print) -> None:
    """Serve until interrupted (``cxr-max serve-teachers``); prints the bound port (port 0 = a free one)."""
    _check_host(host)
    server = SimTeacherServer(world, faults, api_key)

    async def main() -> None:
        runner = web.AppRunner(server.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        url = f"http://{host}:{bound}/v1"
        echo(f"serving {len(world.teachers)} simulated teachers ({', '.join(world.teachers)}) at {url}")
        echo(f"CXR_MAX_SIM_URL={url}")
        if port_file:
            Path(port_file).write_text(f"{bound}\n")
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


class EchoTeacher:
    """A minimal deterministic teacher for tests and benchmarks (no synthetic world needed).

    It answers in the authors' format, names the image, task and sample, and refuses on a fixed
    share of images, so records can be checked exactly.
    """

    def __init__(self, name: str, version: str = "echo-1", refusal_every: int = 5):
        self.name, self.version, self.refusal_every = name, version, refusal_every

    def respond(self, truth: Any, *, task: str = "diagnose", sample: int = 0, seed: int = 0) -> str:
        h = int(hashlib.blake2b(f"{self.name}|{truth.dicom_id}".encode(), digest_size=4).hexdigest(), 16)
        if self.refusal_every and h % self.refusal_every == 0:
            return "As an AI, I cannot provide medical diagnoses. Please consult a radiologist."
        return (f"<think> {self.name} reads image {truth.dicom_id} for task {task}, sample {sample}, seed {seed}: "
                "the cardiac silhouette is enlarged. </think>The disease of this patient is cardiomegaly.")


def make_tiny_world(root: str | Path, n_images: int = 20, teachers: int | list[str] = 3, *, seed: int = 0,
                    image_size: int = 32) -> tuple[Path, SimWorld]:
    """Write a tiny MIMIC-CXR-JPG-like root (metadata table + JPGs) and its :class:`SimWorld` of echo teachers.

    Returns ``(jpg_root, world)``. Every fourth image is LATERAL, the rest PA. Deterministic in ``seed``.
    """
    import csv
    import gzip
    import random
    from types import SimpleNamespace

    from PIL import Image

    jroot = Path(root) / "mimic-cxr-jpg"
    rng = random.Random(seed)
    rows, truth, index = [], {}, {}
    for i in range(n_images):
        sid, study = f"1{i:07d}", f"5{i:07d}"
        dicom = "-".join(f"{rng.getrandbits(32):08x}" for _ in range(5))
        path = Path(jroot) / jpg_relpath(sid, study, dicom)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (image_size, image_size), color=rng.randrange(256)).save(path, format="JPEG")
        rows.append([dicom, sid, study, "LATERAL" if i % 4 == 3 else "PA", image_size, image_size,
                     f"2150{1 + i % 12:02d}01", f"{i % 24:02d}0000.000"])
        truth[dicom] = SimpleNamespace(subject_id=sid, study_id=study, dicom_id=dicom)
        index[SimWorld.digest(path.read_bytes())] = dicom
    with gzip.open(jroot / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dicom_id", "subject_id", "study_id", "ViewPosition", "Rows", "Columns", "StudyDate", "StudyTime"])
        w.writerows(rows)
    with gzip.open(jroot / "mimic-cxr-2.0.0-split.csv.gz", "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dicom_id", "study_id", "subject_id", "split"])
        w.writerows([r[0], r[2], r[1], "train"] for r in rows)
    names = teachers if isinstance(teachers, list) else [f"echo-{k}" for k in range(teachers)]
    return jroot, SimWorld({n: EchoTeacher(n) for n in names}, truth, index, seed)
