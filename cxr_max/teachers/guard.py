"""Compliance guard: MIMIC images go only to local teachers unless the user says otherwise.

PhysioNet's credentialed data use agreement forbids sharing MIMIC data with third parties, and its
guidance on LLMs forbids sending MIMIC data to online services unless they guarantee zero retention,
no training use and no human review (docs/data.md, "Licence and privacy"). So an endpoint is accepted only when its
host is loopback, or is in an allow-list the user sets (e.g. a GPU machine on the same private
network running vLLM), or the user passes an explicit ``allow_remote`` flag.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

ALLOWED_HOSTS_ENV = "CXR_MAX_ALLOWED_HOSTS"  # comma-separated hosts the user allows besides loopback

PHYSIONET_RULE = (
    "PhysioNet's credentialed data use agreement forbids sharing MIMIC-CXR with third parties, and "
    "PhysioNet's guidance on large language models forbids sending MIMIC data to online LLM services "
    "unless the service guarantees zero data retention, no use for training and no human review. "
    "Serve teachers locally (e.g. vLLM on 127.0.0.1 or on a machine you control), add a host you control "
    f"with --allow-host HOST (or {ALLOWED_HOSTS_ENV}), or, only for a service that meets those terms "
    "or for non-MIMIC images, pass --allow-remote."
)


class ComplianceError(PermissionError):
    """An endpoint outside loopback and the allow-list, refused."""


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts_from_env() -> list[str]:
    raw = os.environ.get(ALLOWED_HOSTS_ENV, "")
    return [h.strip().lower() for h in raw.split(",") if h.strip()]


def check_endpoint(
    url: str, *, teacher: str = "?", allowed_hosts: Iterable[str] = (), allow_remote: bool = False
) -> None:
    """Raise :class:`ComplianceError` unless ``url`` may receive MIMIC images.

    ``url`` is the teacher's base URL; the message names the teacher and the host (never a key).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ComplianceError(f"teacher {teacher!r}: base_url {url!r} is not an http(s) URL")
    host = parts.hostname.lower()
    if is_loopback(host) or allow_remote:
        return
    allowed = {h.lower() for h in allowed_hosts} | set(allowed_hosts_from_env())
    if host in allowed:
        return
    raise ComplianceError(
        f"teacher {teacher!r}: refusing to send images to {host} (not loopback and not in the allow-list). "
        + PHYSIONET_RULE
    )


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (API key) replaced by ``***``; short/empty secrets are ignored."""
    for s in secrets:
        if s and s != "EMPTY" and len(s) >= 4:
            text = text.replace(s, "***")
    return text
