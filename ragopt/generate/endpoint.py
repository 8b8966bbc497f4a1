"""A chat model behind any OpenAI-compatible endpoint (vLLM, Ollama, OpenAI...): POST
{base_url}/chat/completions, retried with exponential backoff on 429, 5xx, timeouts and dropped
connections (a Retry-After header is honoured), at most `rpm` requests a minute, from many
threads at once. The standard library's urllib is enough for one blocking request per thread,
and a new connection per request costs little next to a model's seconds of generation."""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable

from ragopt.errors import ModelError
from ragopt.generate.prompts import PROMPT_VERSION
from ragopt.generate.runner import Usage

RETRIES = 5
"""Retries of one request after its first try: waits of 1, 2, 4, 8, 16 seconds unless the server
says how long (Retry-After)."""
LONGEST_WAIT = 60.0


class RateLimiter:
    """At most `rpm` request starts a minute, spaced evenly, shared by every thread."""

    def __init__(self, rpm: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self.clock, self.sleep = clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        """Return when this request may start (its slot is taken at once: others queue behind it)."""
        if not self.interval:
            return
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self.sleep(start - now)


def retry_after(headers: Any, now: datetime | None = None) -> float | None:
    """The seconds a Retry-After header asks to wait (a number, or an HTTP date), or None."""
    value = (headers or {}).get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class EndpointChat:
    """Chat completions from an OpenAI-compatible server, greedy (temperature 0) by default."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, max_tokens: int = 512,
                 temperature: float = 0.0, timeout: float = 120.0, retries: int = RETRIES, rpm: float | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.max_tokens, self.temperature, self.timeout, self.retries = max_tokens, temperature, timeout, retries
        self.sleep = sleep
        self.limiter = RateLimiter(rpm, sleep=sleep)
        self.usage = Usage()

    def describe(self) -> dict[str, Any]:
        return {"type": "endpoint", "model": self.model, "prompt": PROMPT_VERSION}

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The reply's text (empty when the message has none); its tokens added to `usage`."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode("utf-8")
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.api_key}"}
                                                            if self.api_key else {})}
        problem = ""
        for attempt in range(self.retries + 1):
            self.limiter.wait()
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode("utf-8"))
            except urllib.error.HTTPError as error:
                if error.code != 429 and error.code < 500:
                    raise self._refused(error) from None
                problem, wait = f"HTTP {error.code}", retry_after(error.headers)
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException,
                    json.JSONDecodeError, UnicodeDecodeError) as error:
                problem, wait = f"{type(error).__name__}: {getattr(error, 'reason', error)}", None
            else:
                return self._read(payload)
            if attempt < self.retries:
                self.sleep(wait if wait is not None else min(LONGEST_WAIT, 2.0 ** attempt))
        raise ModelError(f"{self.url} failed {self.retries + 1} times (last: {problem}). Check that the server runs "
                         "and answers at --base-url, lower --concurrency or set --rpm if it is overloaded, then rerun "
                         "the same command: it resumes.")

    def _refused(self, error: urllib.error.HTTPError) -> ModelError:
        detail = " ".join(error.read().decode("utf-8", "replace").split())[:300]
        hint = {401: "set --api-key-env to the environment variable holding the key",
                403: "the key may not use this model",
                404: "--base-url must be the part before /chat/completions (e.g. http://localhost:8000/v1) and "
                     "--model a model the server serves"}.get(error.code, "check --model and --base-url")
        return ModelError(f"{self.url} refused the request: HTTP {error.code} {detail}; {hint}.")

    def _read(self, payload: Any) -> str:
        try:
            content = payload["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ModelError(f"{self.url} answered {str(payload)[:300]!r}, not a chat completion (choices[0].message); "
                             "--base-url must point to an OpenAI-compatible API.") from None
        usage = payload.get("usage") or {}
        self.usage.add(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        return content or ""
