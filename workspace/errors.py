"""kaiflow's one error hierarchy. Every message says what to change.

    KaiflowError
    ├── SpecError            a workspace file or field is wrong (names the file and field path)
    ├── SizingError          the preset does not fit the instance type (says how much is needed, what fits)
    ├── ProvisioningError    capacity could not be obtained
    │   ├── QuotaExceeded
    │   └── SkuUnavailable
    ├── DatasetError         the tuning input could not be pulled or read
    ├── TuningError          the tuning program failed
    ├── RegistryError        an adapter image could not be pushed or pulled
    └── DeploymentError      the inference service could not be started or rolled

``transient`` marks faults worth retrying (HTTP 429/5xx, 409 conflicts, timeouts, resets).
Prefect tasks retry only those (see ``tasks.retry_transient``); validation, quota and
authentication errors fail at once.
"""

from __future__ import annotations

from dataclasses import dataclass


class KaiflowError(Exception):
    """Base of every error kaiflow raises on purpose."""

    transient: bool = False
    reason: str = "Failed"

    def __init__(self, message: str, *, transient: bool | None = None, reason: str | None = None):
        super().__init__(message)
        self.message = message
        if transient is not None:
            self.transient = transient
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a workspace file: where (the field path in the YAML's camelCase spelling,
    e.g. ``resource.labelSelector``; empty for the document itself) and what to change."""

    path: str
    message: str

    def line(self, source: str) -> str:
        return f"{source}: {self.path}: {self.message}" if self.path else f"{source}: {self.message}"


class SpecError(KaiflowError):
    """A workspace file or field is wrong. ``problems`` holds each finding (one per line of the
    message) so callers and tests can see every field path, not just the first."""

    reason = "InvalidSpec"

    def __init__(self, message: str, *, problems: list[Problem] | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.problems: list[Problem] = list(problems or [])

    @classmethod
    def of(cls, source: str, problems: list[Problem]) -> "SpecError":
        """One error naming every problem, one per line, each line starting with ``source``."""
        return cls("\n".join(p.line(source) for p in problems), problems=problems)


class SizingError(KaiflowError):
    reason = "InsufficientResources"


class ProvisioningError(KaiflowError):
    reason = "ProvisioningFailed"


class QuotaExceeded(ProvisioningError):
    reason = "QuotaExceeded"


class SkuUnavailable(ProvisioningError):
    reason = "SKUNotAvailable"


class DatasetError(KaiflowError):
    reason = "DatasetPullFailed"


class TuningError(KaiflowError):
    reason = "TuningFailed"


class RegistryError(KaiflowError):
    reason = "ImagePushPullFailed"


class DeploymentError(KaiflowError):
    reason = "DeploymentFailed"


class TransientError(KaiflowError):
    """A fault that is expected to go away (retried with backoff)."""

    transient = True


def is_transient(exc: BaseException) -> bool:
    """True for faults worth retrying: kaiflow errors marked transient, timeouts and connection resets."""
    if isinstance(exc, KaiflowError):
        return exc.transient
    return isinstance(exc, (TimeoutError, ConnectionError))
