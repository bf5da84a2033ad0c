"""Every use of another project's private internals, behind one door.

Where VisionOps needs something a library offers no public API for (a patched method, a cache it
must clear, a log line it reads, a server method it re-implements), the code lives here, one
module per project: `kfp`, `mlflow` (MLflow and boto3), `kserve`. Each lists what it relies on in
`INTERNALS`, with a fingerprint of the internal's source at the pinned version;
`tests/test_compat.py` compares them with what is installed, so an upgrade that changes one fails
there with a message that names the internal and the module to re-check, instead of breaking
silently at run time.

`import visionops._compat` imports none of those projects; `kfp` and `mlflow` import theirs only
inside the functions that use them. `kserve` subclasses KServe's server classes, so importing it
imports KServe: only the predictor (`serving/`) does, which import-linter enforces (`make lint`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Internal:
    """One private detail of another project that VisionOps relies on.

    `target` is `module:attribute.path`; `fingerprint` the first 16 hex digits of the SHA-256 of
    its source at the pinned version ("" when only its presence matters, e.g. a module global).
    """

    target: str
    why: str
    fingerprint: str = ""

    @property
    def distribution(self) -> str:
        """The installed distribution the target belongs to (its top-level package)."""
        return self.target.split(".", 1)[0].split(":", 1)[0]


def resolve(target: str) -> object:
    """The object `module:attribute.path` names; ImportError/AttributeError when it is gone."""
    module_name, _, path = target.partition(":")
    found: object = importlib.import_module(module_name)
    for part in filter(None, path.split(".")):
        found = getattr(found, part)
    return found


def fingerprint(obj: object) -> str:
    """The first 16 hex digits of the SHA-256 of `obj`'s source code."""
    source = inspect.getsource(inspect.unwrap(obj))  # type: ignore[arg-type]
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def check(internal: Internal, module: str) -> str | None:
    """None if `internal` is as VisionOps expects; else one line naming it, the installed version
    and `module`, the VisionOps code to re-check."""
    where = f"{internal.distribution} {installed_version(internal.distribution)}"
    try:
        obj = resolve(internal.target)
    except (ImportError, AttributeError) as error:
        return (
            f"{internal.target} is gone in {where} ({type(error).__name__}: {error}); "
            f"{module} relies on it: {internal.why}"
        )
    if internal.fingerprint:
        found = fingerprint(obj)
        if found != internal.fingerprint:
            return (
                f"{internal.target} changed in {where} (source fingerprint {found}, expected "
                f"{internal.fingerprint}); re-check {module}, which relies on it: {internal.why}"
            )
    return None
