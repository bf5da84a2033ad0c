"""KFP v2 components: one file per pipeline step, each a thin wrapper over `visionops`.

Every component is a lightweight Python component built with `visionops_component`: it runs on the
project's pipeline image (which holds `visionops` and kfp), so nothing is pip-installed at run time,
and its body imports `visionops` and calls `bootstrap()` before anything else. Locally, KFP's
SubprocessRunner runs the same functions in this virtual environment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kfp import dsl

from visionops.config import get_settings


def visionops_component(func: Callable[..., Any]) -> Any:
    """`@dsl.component` on the VisionOps pipeline image, without installing kfp at run time."""
    return dsl.component(func, base_image=get_settings().pipeline_image, install_kfp_package=False)
