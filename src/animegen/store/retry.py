"""Retries of object-store requests: exponential backoff with jitter, bounded per request (:class:`RetryPolicy`).

Only :class:`~animegen.store.s3.S3UnavailableError` (endpoint unreachable, 5xx) is retried; refused credentials,
missing buckets and checksum mismatches pass through at once.
"""
from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger("animegen.store.artifacts")  # the name the store's retry warnings always had
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for one S3 request: ``attempts`` tries at most (the first included), waiting
    ``initial_delay_s * 2**k`` (at most ``max_delay_s``, jittered to 50-100 %) between them, and no new attempt
    once ``max_total_s`` have passed since the first."""

    attempts: int = 6
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_total_s: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_delay_s < 0 or self.max_delay_s < 0 or self.max_total_s < 0:
            raise ValueError(f"invalid {self}: attempts must be >= 1 and the times >= 0")

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """Defaults, overridden by ``ANIMEGEN_STORE_RETRIES`` (attempts) and ``ANIMEGEN_STORE_RETRY_MAX_S``."""
        kw: dict[str, Any] = {}
        for var, name, cast in (("ANIMEGEN_STORE_RETRIES", "attempts", int),
                                ("ANIMEGEN_STORE_RETRY_MAX_S", "max_total_s", float)):
            value = os.environ.get(var)
            if value:
                try:
                    kw[name] = cast(value)
                except ValueError:
                    raise ValueError(f"{var}={value!r} is not a number") from None
        return cls(**kw)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return min(self.max_delay_s, self.initial_delay_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


def retrying(fn: Callable[[], T], what: str, policy: RetryPolicy | None = None,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, retried on :class:`S3UnavailableError` as ``policy`` allows; other errors pass through at once."""
    from animegen.store.s3 import S3UnavailableError

    policy = policy or RetryPolicy.from_env()
    start = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except S3UnavailableError as e:
            elapsed = time.monotonic() - start
            wait = policy.delay(attempt)
            if attempt == policy.attempts or elapsed + wait > policy.max_total_s:
                raise S3UnavailableError(
                    f"{e} (gave up {what} after {attempt} attempt{'s' * (attempt > 1)} in {elapsed:.1f}s; "
                    "raise ANIMEGEN_STORE_RETRIES / ANIMEGEN_STORE_RETRY_MAX_S to wait longer)") from None
            log.warning("%s failed (attempt %d/%d): %s; retrying in %.2fs", what, attempt, policy.attempts, e, wait)
            sleep(wait)
    raise AssertionError("unreachable")
