"""The image a cluster's pods run (``KAIFLOW_IMAGE``): which one, and whether it exists.

Every step of the cluster platforms runs in this one image — ``python -m infra.pod``, ``python -m
tuning``, ``python -m tuning.evaluate``, ``python -m serving`` — and the same image runs a Prefect
worker for the Kubernetes work pool (deployments/images/, issue 17). A reference that names
nothing fails late and far away: a pod in ImagePullBackOff after nodes were paid for. So kaiflow
resolves it before it creates anything: when the registry answers and has no such image, the
apply is refused, saying what to change; when the registry cannot be reached from where kaiflow
runs (a private registry only the cluster sees), that is said and the apply goes on.

Build the image with ``make images`` (deployments/images/build.sh), copy it to your registry with
``make images PUSH=registry.example.com/team/kaiflow``, and set ``KAIFLOW_IMAGE`` to what it prints.
"""

from __future__ import annotations

import dataclasses

from infra import registry
from workspace import errors, settings as settings_mod


@dataclasses.dataclass(frozen=True)
class Resolved:
    """``reference`` and the manifest digest it points at; ``digest`` None: not checked (no
    registry host in the reference, or the registry could not be reached), ``note`` says which."""

    reference: str
    digest: str | None
    note: str

    def line(self) -> str:
        """What kaiflow prints: the image its pods run."""
        return f"pods run image {self.reference}" + (f" ({self.digest})" if self.digest else f" ({self.note})")


def resolve(reference: str | None = None, *, credentials: registry.Credentials | None = None) -> Resolved:
    """Resolve ``reference`` (default: ``KAIFLOW_IMAGE``) in its registry, one try per exchange.

    Raises :class:`workspace.errors.SpecError` naming ``KAIFLOW_IMAGE`` when the registry answers
    that it has no such image; an unreachable registry is not an error (see the module docstring)."""
    reference = reference or settings_mod.load().image
    try:
        ref = registry.parse_reference(reference)
    except errors.KaiflowError as err:
        raise errors.SpecError(f"KAIFLOW_IMAGE={reference!r} is not an image reference: {err}") from err
    if not ref.registry or ref.layout is not None:
        return Resolved(reference, None, "no registry host in the reference: not checked")
    reg_settings = dataclasses.replace(registry.RegistrySettings.from_env(), attempts=1, timeout_s=10.0)
    store = registry.store_for(reference, reg_settings, credentials)
    try:
        digest = store.resolve(reference)
    except errors.KaiflowError as err:
        if err.transient:
            return Resolved(reference, None, f"{ref.registry} not reachable from here: not checked")
        raise errors.SpecError(f"KAIFLOW_IMAGE={reference}: {err}; build and push kaiflow's image with "
                               "`make images PUSH=<registry>/<repository>` and set KAIFLOW_IMAGE to what it prints") from err
    finally:
        store.close()
    if digest is None:
        raise errors.SpecError(f"KAIFLOW_IMAGE={reference}: no such image in {ref.registry}; build and push kaiflow's "
                               "image with `make images PUSH=<registry>/<repository>` and set KAIFLOW_IMAGE to what it prints")
    return Resolved(reference, digest, "resolved")
