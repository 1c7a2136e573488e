"""The teacher registry: a YAML file that lists the teachers to ask and how to ask them.

A registry looks like this (see ``registries/vllm.yaml`` and ``registries/sim.yaml``)::

    defaults:                      # optional; merged under every teacher
      base_url: http://127.0.0.1:8000/v1
      temperature: 0.7
    teachers:
      - name: qwen-vl-max          # the name written into every record ("teacher")
        model: Qwen/Qwen2.5-VL-72B-Instruct   # the model id the server knows
        base_url: http://127.0.0.1:8001/v1    # OpenAI-compatible endpoint (vLLM: .../v1)
        api_key_env: QWEN_API_KEY  # NAME of the environment variable that holds the key (never the key)
        version: "2025-08-13"      # recorded in every row; "auto" asks the server's /models
        prompt_template: cxr-max-v1
        temperature: 0.7
        top_p: 0.95
        max_tokens: 1024
        extra_params: {}           # any other sampling parameters, sent as-is (e.g. top_k, repetition_penalty)
        max_concurrency: 16        # requests in flight for this teacher
        requests_per_minute: 600   # rate limit for this teacher (0 = none)
        timeout_s: 120             # per request
        max_retries: 6             # retries of one request (429, 5xx, connection errors, timeouts)

Unknown keys and missing required keys are errors that name the file and the teacher.
``base_url`` may use ``${VAR}`` / ``${VAR:-default}`` so one registry serves several machines.
"""

from __future__ import annotations

import dataclasses
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from cxr_max.errors import DataError

BUNDLED = ("sim", "vllm")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
    """One teacher: where it is served and how to sample from it. Holds the key's variable NAME only."""

    name: str
    model: str
    base_url: str
    version: str
    api_key_env: str | None = None
    prompt_template: str = "cxr-max-v1"
    temperature: float = 0.7
    top_p: float | None = None
    max_tokens: int = 1024
    extra_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_concurrency: int = 8
    requests_per_minute: float = 0.0
    timeout_s: float = 120.0
    max_retries: int = 6

    def api_key(self) -> str:
        """The key from the environment variable named in the registry, or "EMPTY" (what vLLM expects)."""
        if not self.api_key_env:
            return "EMPTY"
        value = os.environ.get(self.api_key_env)
        if not value:
            raise DataError(
                f"teacher {self.name!r}: environment variable {self.api_key_env} (its API key) is not set"
            )
        return value

    def sampling_params(self) -> dict[str, Any]:
        """The sampling fields of a chat-completions request body."""
        params: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.top_p is not None:
            params["top_p"] = self.top_p
        params.update(self.extra_params)
        return params


REQUIRED_KEYS = ("name", "model", "base_url", "version")
_FIELDS = {f.name: f for f in dataclasses.fields(TeacherSpec)}
_TOP_KEYS = {"defaults", "teachers", "description"}


@dataclasses.dataclass(frozen=True)
class Registry:
    """The teachers of one registry file, in file order."""

    teachers: tuple[TeacherSpec, ...]
    source: str = "<memory>"
    description: str = ""

    def __iter__(self):
        return iter(self.teachers)

    def __len__(self) -> int:
        return len(self.teachers)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.teachers]

    def select(self, names: list[str] | None) -> "Registry":
        """Only the named teachers (all when ``names`` is empty); unknown names are an error."""
        if not names:
            return self
        unknown = sorted(set(names) - set(self.names))
        if unknown:
            raise DataError(f"unknown teacher(s) {unknown}; this registry has {self.names}", path=self.source)
        return dataclasses.replace(self, teachers=tuple(t for t in self.teachers if t.name in names))

    def with_base_url(self, base_url: str | None) -> "Registry":
        """Every teacher pointed at ``base_url`` (e.g. the port a local server bound); None = unchanged."""
        if not base_url:
            return self
        return dataclasses.replace(
            self, teachers=tuple(dataclasses.replace(t, base_url=base_url) for t in self.teachers)
        )


def _expand_env(value: str) -> str:
    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise KeyError(name)

    return _ENV_REF.sub(sub, value)


def _coerce(spec_name: str, key: str, value: Any, where: str) -> Any:
    kind = _FIELDS[key].type
    bad = DataError(f"teacher {spec_name!r}: {key} must be {kind}, got {value!r}", path=where)
    if key in ("temperature", "top_p", "requests_per_minute", "timeout_s"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise bad
        return float(value)
    if key in ("max_tokens", "max_concurrency", "max_retries"):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "max_retries" else 1):
            raise bad
        return value
    if key == "extra_params":
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if key == "api_key_env":
        if value is not None and (not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value)):
            raise DataError(
                f"teacher {spec_name!r}: api_key_env must be the NAME of an environment variable "
                "(the key itself never goes in the registry)",
                path=where,
            )
        return value
    if value is None or isinstance(value, (dict, list)):
        raise bad
    return str(value)


def parse_registry(data: Any, source: str = "<memory>") -> Registry:
    """Validate a registry already loaded from YAML (a dict) and return it."""
    if not isinstance(data, dict):
        raise DataError("a registry must be a mapping with a 'teachers' list", path=source)
    unknown_top = set(data) - _TOP_KEYS
    if unknown_top:
        raise DataError(f"unknown top-level key(s) {sorted(unknown_top)}; allowed: {sorted(_TOP_KEYS)}", path=source)
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise DataError("'defaults' must be a mapping", path=source)
    bad_defaults = set(defaults) - set(_FIELDS)
    if bad_defaults:
        raise DataError(f"unknown key(s) {sorted(bad_defaults)} in defaults; allowed: {sorted(_FIELDS)}", path=source)
    entries = data.get("teachers")
    if not isinstance(entries, list) or not entries:
        raise DataError("'teachers' must be a non-empty list", path=source)
    teachers: list[TeacherSpec] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"teacher entry {i} must be a mapping", path=source, row=i)
        name = str(entry.get("name", f"#{i}"))
        unknown = set(entry) - set(_FIELDS)
        if unknown:
            raise DataError(
                f"teacher {name!r}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}", path=source, row=i
            )
        merged = {**defaults, **entry}
        missing = [k for k in REQUIRED_KEYS if merged.get(k) in (None, "")]
        if missing:
            raise DataError(f"teacher {name!r}: missing required key(s) {missing}", path=source, row=i)
        values = {k: _coerce(name, k, v, source) for k, v in merged.items()}
        try:
            values["base_url"] = _expand_env(values["base_url"]).rstrip("/")
        except KeyError as e:
            raise DataError(
                f"teacher {name!r}: base_url uses ${{{e.args[0]}}} which is not set and has no default", path=source, row=i
            ) from None
        teachers.append(TeacherSpec(**values))
    names = [t.name for t in teachers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"duplicate teacher name(s) {dupes}", path=source)
    return Registry(tuple(teachers), source=source, description=str(data.get("description", "")))


def load_registry(name_or_path: str | os.PathLike) -> Registry:
    """Load a bundled registry by name (``"sim"``, ``"vllm"``) or a YAML file by path."""
    text: str
    if str(name_or_path) in BUNDLED:
        source = f"cxr_max/teachers/registries/{name_or_path}.yaml"
        text = resources.files("cxr_max.teachers").joinpath("registries", f"{name_or_path}.yaml").read_text("utf-8")
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise DataError(f"no such registry file (bundled registries: {list(BUNDLED)})", path=path)
        source, text = str(path), path.read_text("utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DataError(f"not valid YAML: {e}", path=source) from None
    return parse_registry(data, source)
