"""One teacher's OpenAI-compatible chat-completions client: rate limit, retries, failure reasons.

Built on aiohttp directly (not the ``openai`` package) for throughput on small machines and for full
control of retries. Retries (tenacity: exponential backoff with full jitter, honouring Retry-After)
cover 429, 5xx, connection errors, timeouts and malformed bodies, bounded per request
(``max_retries``) and per teacher by a :class:`RetryBudget`, so a dead server fails fast instead of
retrying every request. A request that finally fails raises :class:`RequestFailed` with a reason
category; the collector writes it as a failure row. API keys are sent in a header and scrubbed from
every message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from cxr_max.teachers.guard import redact
from cxr_max.teachers.registry import TeacherSpec

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class RequestFailed(Exception):
    """A request that finally failed. ``reason`` is a category (e.g. ``http_429``, ``timeout``)."""

    def __init__(self, reason: str, detail: str = "", *, retryable: bool = False, raw: str | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail, self.retryable, self.raw, self.retry_after = reason, detail, retryable, raw, retry_after


@dataclasses.dataclass
class Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    attempts: int


class RateLimiter:
    """Spaces requests to at most ``per_minute`` per minute, allowing a burst of ``burst``."""

    def __init__(self, per_minute: float, burst: int = 1):
        self.interval = 60.0 / per_minute if per_minute > 0 else 0.0
        self.burst = max(1, burst)
        self._next = time.monotonic()

    async def acquire(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        slot = max(self._next, now - (self.burst - 1) * self.interval)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class RetryBudget:
    """Retries allowed per teacher: ``minimum + ratio * requests``; beyond it requests fail at once."""

    def __init__(self, ratio: float = 0.5, minimum: int = 100):
        self.ratio, self.minimum = ratio, minimum
        self.requests = 0
        self.retries = 0
        self.exhausted = 0

    def spend(self) -> bool:
        if self.retries < self.minimum + self.ratio * self.requests:
            self.retries += 1
            return True
        self.exhausted += 1
        return False


def _content_text(message: dict) -> str | None:
    content = message.get("content")
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is not None and not isinstance(content, str):
        return None
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if isinstance(reasoning, str) and reasoning.strip():  # vLLM reasoning parsers split the think block out
        return f"<think>{reasoning.strip()}</think>{content or ''}"
    return content


class TeacherClient:
    """Sends chat-completions requests for one teacher over a shared aiohttp session."""

    def __init__(self, spec: TeacherSpec, session: aiohttp.ClientSession, *, budget: RetryBudget | None = None,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0):
        self.spec = spec
        self.session = session
        self.budget = budget or RetryBudget()
        self.limiter = RateLimiter(spec.requests_per_minute, burst=spec.max_concurrency)
        self._key = spec.api_key()
        self._headers = {"Authorization": f"Bearer {self._key}", "Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
        self._url = spec.base_url + "/chat/completions"
        self._wait = wait_random_exponential(multiplier=backoff_s, max=max_backoff_s)
        self.retries = 0

    def scrub(self, text: str) -> str:
        return redact(text, [self._key])

    async def list_models(self, timeout_s: float = 10.0) -> list[dict]:
        """GET /models (used to check the server is up and serves the model)."""
        try:
            async with self.session.get(self.spec.base_url + "/models", headers=self._headers,
                                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RequestFailed(f"http_{resp.status}", self.scrub(body[:200].decode("utf-8", "replace")))
                data = json.loads(body)
                return list(data.get("data", []))
        except RequestFailed:
            raise
        except (aiohttp.ClientError, OSError) as e:
            raise RequestFailed("unreachable", self.scrub(f"{type(e).__name__}: {e}")) from None
        except asyncio.TimeoutError:
            raise RequestFailed("unreachable", f"no answer from /models in {timeout_s:g}s") from None
        except (ValueError, AttributeError) as e:
            raise RequestFailed("malformed_response", f"/models: {e}") from None

    def _body(self, messages: list[dict], sample: int) -> bytes:
        body: dict[str, Any] = {"model": self.spec.model, "messages": messages, **self.spec.sampling_params()}
        body["seed"] = sample  # the sample index; servers that honour seeds make samples reproducible
        return json.dumps(body).encode()

    async def _once(self, body: bytes) -> Completion:
        await self.limiter.acquire()
        try:
            async with self.session.post(self._url, data=body, headers=self._headers, timeout=self._timeout) as resp:
                payload = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except asyncio.TimeoutError:
            raise RequestFailed("timeout", f"no answer in {self.spec.timeout_s:g}s", retryable=True) from None
        except (aiohttp.ClientError, OSError) as e:
            raise RequestFailed("connection_error", self.scrub(f"{type(e).__name__}: {e}"), retryable=True) from None
        if status != 200:
            after = None
            if retry_after:
                try:
                    after = float(retry_after)
                except ValueError:
                    pass
            detail = self.scrub(payload[:200].decode("utf-8", "replace"))
            raise RequestFailed(f"http_{status}", detail, retryable=status in RETRYABLE_STATUS, retry_after=after)
        try:
            data = json.loads(payload)
            choice = data["choices"][0]
            text = _content_text(choice["message"])
            if text is None:
                raise TypeError("message.content is not text")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise RequestFailed("malformed_response", f"{type(e).__name__}: {e}"[:200], retryable=True) from None
        usage = data.get("usage") or {}
        finish = choice.get("finish_reason")
        if not text.strip():
            raise RequestFailed("empty_completion", f"finish_reason={finish}")
        if finish == "length":
            raise RequestFailed("truncated_completion", f"hit max_tokens={self.spec.max_tokens}", raw=text)
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return Completion(text, pt if isinstance(pt, int) else None, ct if isinstance(ct, int) else None, finish, 0)

    def _stop(self, state: RetryCallState) -> bool:
        if state.attempt_number > self.spec.max_retries:
            return True
        return not self.budget.spend()

    def _wait_for(self, state: RetryCallState) -> float:
        wait = self._wait(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RequestFailed) and exc.retry_after:
            wait = max(wait, min(exc.retry_after, 60.0))
        return wait

    async def complete(self, messages: list[dict], sample: int = 0) -> Completion:
        """One completion, retried as configured; raises :class:`RequestFailed` when it finally fails."""
        body = self._body(messages, sample)
        self.budget.requests += 1
        attempts = 0
        retrying = AsyncRetrying(
            stop=self._stop, wait=self._wait_for, reraise=True,
            retry=retry_if_exception(lambda e: isinstance(e, RequestFailed) and e.retryable),
        )
        async for attempt in retrying:
            with attempt:
                attempts += 1
                if attempts > 1:
                    self.retries += 1
                result = await self._once(body)
                result.attempts = attempts
                return result
        raise AssertionError("unreachable")  # pragma: no cover - tenacity either returns or reraises
