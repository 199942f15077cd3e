"""Pooling stages: one class per stage `type`, registered by that type (see `base.py` for the interface).

Every module of this package is imported here, so a stage registers itself by existing: adding a stage is one new
module (a frozen dataclass decorated with `@register_stage`) plus its tests. Nothing here imports transformers.
"""

from __future__ import annotations

import importlib
import pkgutil

from longctx_adapter.ops.stages.base import (
    STAGES,
    Flow,
    FrameSizes,
    GridShape,
    PooledVideo,
    Stage,
    parse_stages,
    register_stage,
    stage_from_dict,
    unregister_stage,
)

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = [
    "STAGES",
    "Flow",
    "FrameSizes",
    "GridShape",
    "PooledVideo",
    "Stage",
    "parse_stages",
    "register_stage",
    "stage_from_dict",
    "unregister_stage",
]
