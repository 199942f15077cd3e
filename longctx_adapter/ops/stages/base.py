"""What every pooling stage is: one frozen dataclass registered by its `type`, plus the shapes and the pass state
that the stages share. Pure code (torch only, no transformers).

A stage class owns everything about its type, so adding a stage means adding one module to this package (it is
imported and registered on import, see `__init__.py`) and its tests; no other file names the type.

| member | what it answers |
| --- | --- |
| `type`, `shorthand_help`, `must_be_last` | registry key; CLI usage text; why no stage may follow (None: any may) |
| `takes_frames` | it may follow a must-be-last stage: it takes that stage's per-frame output (`Flow.frames`) |
| `data_dependent` | its token count or layout depends on the data: `output_shape` is an upper bound, positions need the trace |
| `from_dict` / `to_dict` | validation and defaults / the plain JSON-able dict stored in AdapterConfig |
| `parse_shorthand` / `shorthand` | `temporal:2,2` -> stage dict / the stage back as shorthand (None if none) |
| `output_shape(shape)` | sizes without tensors: GridShape -> GridShape, or FrameSizes for a stage that must be last |
| `min_frames(n)` | fewest input frames it accepts that give at least n output frames (arithmetic) |
| `apply(flow)` | the op on a `Flow` (grid, question guide, frame origins); uniform stages only write `pool_grid` |
| `keeps_frames(shape)` | output frame i is input frame i (question guidance reports which input frames were kept) |
| `for_coordinates()` | the stage to run on coordinate grids (positions): e.g. max pooling places tokens like avg |
| `for_frames()` | the stage to run on frame indicators (`positions.frame_sources`): which input frames a frame is |
| `guided`, `describe()` | needs the question scorer; a short name for messages |
| `chunk_frames(n)` | chunked encoding: frames a chunk of n frames becomes when pooled chunk by chunk gives the same tokens |
| `scratch_tokens(shape)` | estimator: token vectors the op holds beyond its input and output |

Variable token counts (content-aware stages whose count depends on the data): `output_shape` then returns an
upper bound (`exact=False`) and the op decides. A pooled frame is always a tensor `(h, w, D)`; a frame that keeps
an arbitrary set of n tokens is stored as one row, `(1, n, D)`, in the order the tokens take in the placeholder
run, so `PooledVideo.flatten()` (frame-major, row-major) and per-frame counts (`h * w`) need no special case. Such a
stage records what it decided in `flow.decision` (kept for the call as `PooledVideo.trace`) and, when
`flow.replayed` is set, applies that decision instead of deciding again: positions replay the features' trace on a
coordinate grid, so every kept or merged token gets the (t, row, column) centre of what it stands for. Such frames
are flagged `Flow.ragged`, so a later stage that takes frames can refuse them. A pass that ends with no token at
all is refused (`pool_video`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import ClassVar

import torch

from longctx_adapter.errors import AdapterError

__all__ = [
    "FRAME_SCORES",
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

#: how question-guided stages score a frame: mean / max of its token weights, or the whole-frame embedding
FRAME_SCORES = ("mean", "max", "global")
#: type -> Stage subclass; filled by @register_stage as the stage modules are imported
STAGES: dict[str, type[Stage]] = {}


# ---------------------------------------------------------------------------------------------------------------------
# Shapes without tensors.


@dataclass(frozen=True)
class GridShape:
    """A video that is still one grid: `frames` frames of `height` x `width` tokens (an upper bound if not exact)."""

    frames: int
    height: int
    width: int
    exact: bool = True

    @property
    def num_tokens(self) -> int:
        return self.frames * self.height * self.width

    def frame_sizes(self) -> list[tuple[int, int]]:
        return [(self.height, self.width)] * self.frames


@dataclass(frozen=True)
class FrameSizes:
    """Per-frame (h, w) of a video that is no longer one grid, kept compact so shape checks stay arithmetic.

    cycle: runs `(count, (h, w))` that repeat: frame t has the size at position `t mod sum(counts)` of the cycle
    (progressive pooling: one run per stride of its group). Only `frame_sizes()` builds a list per frame.
    """

    frames: int
    cycle: tuple[tuple[int, tuple[int, int]], ...]
    exact: bool = True

    @property
    def period(self) -> int:
        return sum(count for count, _ in self.cycle)

    @property
    def num_tokens(self) -> int:
        full, rest = divmod(self.frames, self.period)
        tokens = full * sum(count * h * w for count, (h, w) in self.cycle)
        for count, (h, w) in self.cycle:
            take = min(count, rest)
            tokens += take * h * w
            rest -= take
        return tokens

    def frame_sizes(self) -> list[tuple[int, int]]:
        one_cycle = [size for count, size in self.cycle for _ in range(min(count, self.frames))]
        full, rest = divmod(self.frames, len(one_cycle))
        return one_cycle * full + one_cycle[:rest]


def cycle_of(sizes: Sequence[tuple[int, int]]) -> tuple[tuple[int, tuple[int, int]], ...]:
    """Run-length form of a list of per-frame sizes (adjacent equal sizes merged)."""
    runs: list[list] = []
    for count, size in sizes:
        if runs and runs[-1][1] == size:
            runs[-1][0] += count
        else:
            runs.append([count, size])
    return tuple((count, size) for count, size in runs)


# ---------------------------------------------------------------------------------------------------------------------
# The result of pooling one video, and the state of a pass through the stages.


@dataclass(frozen=True)
class PooledVideo:
    """Pooled frames kept apart: frames may differ in size (progressive pooling) or keep any set of tokens."""

    frames: tuple[torch.Tensor, ...]
    #: question-guided stages only: what they decided (guided.GuidedInfo: the guide, kept frames, anchors)
    guided: object = field(default=None, compare=False, repr=False)
    #: one entry per stage: what a data-dependent stage decided (None for the others); replayed on coordinates
    trace: tuple = field(default=(), compare=False, repr=False)

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(f.shape[0]), int(f.shape[1])) for f in self.frames)

    @property
    def num_tokens(self) -> int:
        return sum(h * w for h, w in self.sizes)

    def flatten(self) -> torch.Tensor:
        """Tokens in placeholder order: frame-major, row-major inside a frame."""
        if not self.frames:
            raise AdapterError("a PooledVideo with no frames has no feature size to flatten; pool a grid with T >= 1")
        if len(self.frames) == 1:
            return self.frames[0].reshape(-1, self.frames[0].shape[-1])
        return torch.cat([f.reshape(-1, f.shape[-1]) for f in self.frames])


@dataclass(frozen=True)
class Flow:
    """One video on its way through the stages (see `Stage.apply`).

    grid: the (T, H, W, D) grid so far, or None once a last-only stage made per-frame `frames`.
    guide: the question relevance of `grid` (guided.Guide) or None; stages keep it matched to the grid they output.
    origin: the input frame behind each current frame, or None once a stage mixed frames.
    coordinates: `grid` holds (t, row, column) coordinates (positions.pooled_coordinates).
    kept_frames, anchors: what frame selection / keyframe pooling decided (reported on PooledVideo.guided).
    step, decision, replay: the stage's index; what it decided (data-dependent stages); a trace to replay.
    ragged: `frames` hold token sets chosen from the data (rows `(1, n, D)`), not spatial grids.
    """

    grid: torch.Tensor | None
    frames: tuple | None = None
    guide: object = None
    origin: torch.Tensor | None = None
    coordinates: bool = False
    kept_frames: tuple | None = None
    anchors: tuple | None = None
    step: int = 0
    decision: object = None
    replay: tuple | None = None
    ragged: bool = False

    @property
    def shape(self) -> GridShape:
        return GridShape(*(int(n) for n in self.grid.shape[:3]))

    @property
    def replayed(self):
        """The decision this stage made on the features, when this pass replays their trace (else None)."""
        if self.replay is None or self.step >= len(self.replay):
            return None
        return self.replay[self.step]

    def replace(self, **changes) -> Flow:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------------------------------------------------
# Validation helpers: messages name the key the user gave and say what to use instead.


def is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def positive_int(value, what: str) -> int:
    if not is_int(value) or value < 1:
        raise AdapterError(f"{what} must be a positive integer, got {value!r}; use an int >= 1")
    return int(value)


def int_list(value, what: str, length: int | None = None) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise AdapterError(f"{what} must be a list of positive integers, got {value!r}")
    if length is not None and len(value) != length:
        raise AdapterError(f"{what} must have {length} entries (time, height, width), got {value!r}")
    return [positive_int(v, f"each entry of {what}") for v in value]


def triple(value, what: str) -> list[int]:
    """A single int means the same value on time, height and width."""
    if is_int(value):
        return [positive_int(value, what)] * 3
    return int_list(value, what, length=3)


def choice(value, options: Sequence, what: str):
    if value not in options:
        raise AdapterError(f"{what} {value!r} is not supported; use one of {tuple(options)}")
    return value


def frame_score(data: Mapping, kind: str) -> str:
    return choice(data.get("score", "mean"), FRAME_SCORES, f"{kind} 'score'")


def scorer_name(data: Mapping, kind: str):
    """None (the scorer given to apply_adapter) or a string: a name given to register_scorer, or a local path."""
    scorer = data.get("scorer")
    if scorer is not None and (not isinstance(scorer, str) or not scorer):
        raise AdapterError(
            f"{kind} 'scorer' must be a string (a registered scorer name or a local CLIP/SigLIP checkpoint path) or "
            f"null, got {scorer!r}; pass a loaded scorer model as apply_adapter(model, config, scorer=...) instead"
        )
    return scorer


def shorthand_ints(args: str, counts: Sequence[int], usage: str) -> list[int]:
    """`2,8,4` (or `2/8/4`, for places where commas separate other things) -> [2, 8, 4], `len` in `counts`."""
    parts = [p.strip() for p in str(args).replace("/", ",").split(",") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise AdapterError(f"{usage}: expected integers separated by ',', got {args!r}") from None
    if len(values) not in counts:
        wanted = " or ".join(str(c) for c in counts)
        raise AdapterError(f"{usage}: expected {wanted} integers, got {args!r}")
    return values


# ---------------------------------------------------------------------------------------------------------------------
# The stage base class and the registry.


@dataclass(frozen=True)
class Stage:
    """Base of every pooling stage (see the module docstring for the member table)."""

    type: ClassVar[str] = ""
    #: CLI usage, e.g. "temporal:K[,S]" (empty: the stage has no shorthand; use JSON)
    shorthand_help: ClassVar[str] = ""
    #: why no stage may follow this one (None: any may), except stages that take frames
    must_be_last: ClassVar[str | None] = None
    #: this stage may follow a must-be-last stage: its `apply` takes `flow.frames` as well as a grid
    takes_frames: ClassVar[bool] = False
    #: which tokens it keeps depends on the features: `output_shape` is an upper bound, and positions must replay
    #: the features' `PooledVideo.trace`
    data_dependent: ClassVar[bool] = False

    # --- config ------------------------------------------------------------------------------------------------------
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The keys a stage dict of this type may hold."""
        return ("type", *(f.name for f in dataclasses.fields(cls)))

    @classmethod
    def from_dict(cls, data: Mapping) -> Stage:
        """Validate a stage dict (keys already checked by `stage_from_dict`) and fill its defaults."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The plain JSON-able dict AdapterConfig stores (lists, not tuples)."""
        return {"type": self.type, **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        """The stage dict of `<type>:<args>` on the command line."""
        raise AdapterError(f"{cls.type} has no shorthand; give it as JSON, e.g. '{{\"type\": \"{cls.type}\", ...}}'")

    def shorthand(self) -> str | None:
        """This stage as a shorthand that parses back to the same dict, or None when JSON is needed."""
        return None

    # --- question guidance -------------------------------------------------------------------------------------------
    @property
    def guided(self) -> bool:
        """True when the result depends on the question (the stage needs a scorer)."""
        return False

    def describe(self) -> str:
        return self.type

    # --- shapes ------------------------------------------------------------------------------------------------------
    def output_shape(self, shape: GridShape) -> GridShape | FrameSizes:
        """The shape this stage makes of `shape`, with the same AdapterError as the op for grids it refuses."""
        raise NotImplementedError

    def min_frames(self, frames_out: int) -> int:
        """Fewest input frames it accepts that give at least `frames_out` frames (or the fewest it accepts)."""
        return frames_out

    # --- the op ------------------------------------------------------------------------------------------------------
    def apply(self, flow: Flow) -> Flow:
        """Pool `flow.grid`; the default serves stages that are one uniform op (`pool_grid`) on the grid."""
        shape = flow.shape
        grid = self.pool_grid(flow.grid)
        guide = None if flow.guide is None else flow.guide.pooled(self.pool_grid)
        origin = flow.origin if flow.origin is not None and self.keeps_frames(shape) else None
        return flow.replace(grid=grid, guide=guide, origin=origin)

    def pool_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """(T, H, W, D) -> (T', H', W', D) for stages that are one uniform op (any D, so the guide follows)."""
        raise NotImplementedError

    def keeps_frames(self, shape: GridShape) -> bool:
        return False

    def for_coordinates(self) -> Stage:
        return self

    def for_frames(self) -> Stage:
        """The stage that tells which input frames each output frame comes from (default: as coordinates)."""
        return self.for_coordinates()

    # --- chunked encoding and the estimator ----------------------------------------------------------------------
    def chunk_frames(self, frames: int) -> tuple[int | None, str]:
        """(frames out, "") when pooling chunks of `frames` frames one by one gives the whole video's tokens, else
        (None, why not)."""
        return None, f"{self.type} pools to a size that depends on the whole video"

    def scratch_tokens(self, shape: GridShape) -> int:
        return 0


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make `cls` the stage of `{"type": cls.type}` everywhere (config, ops, CLI, estimator)."""
    if not cls.type or not isinstance(cls.type, str):
        raise TypeError(f"{cls.__name__} needs a class attribute type = '<name>'")
    if cls.type in STAGES and STAGES[cls.type] is not cls:
        raise TypeError(f"stage type {cls.type!r} is already registered by {STAGES[cls.type].__name__}")
    STAGES[cls.type] = cls
    return cls


def unregister_stage(kind: str) -> None:
    """Remove a registered stage type (for tests that register a toy stage)."""
    STAGES.pop(kind, None)


def stage_from_dict(data) -> Stage:
    """The Stage of one stage dict (or the Stage itself), validated: unknown types and keys name the choices."""
    if isinstance(data, Stage):
        return data
    if not isinstance(data, Mapping):
        raise AdapterError(f"a pooling stage must be a dict such as {{'type': 'temporal'}}, got {data!r}")
    kind = data.get("type")
    cls = STAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise AdapterError(f"unknown pooling stage type {kind!r}; set 'type' to one of {tuple(STAGES)}")
    allowed = cls.keys()
    for key in data:
        if key not in allowed:
            raise AdapterError(f"unknown key {key!r} in a {kind} pooling stage; allowed keys: {allowed}")
    return cls.from_dict(data)


def parse_stages(pooling) -> tuple[Stage, ...]:
    """None, one stage or a list of stages (dicts or Stage objects) -> validated Stages; checks the order rules."""
    if pooling is None:
        return ()
    if isinstance(pooling, (Mapping, Stage)):
        pooling = [pooling]
    if isinstance(pooling, (str, bytes)) or not isinstance(pooling, Sequence):
        raise AdapterError(f"pooling must be None, a stage dict or a list of stage dicts, got {pooling!r}")
    stages = tuple(stage_from_dict(stage) for stage in pooling)
    for position, stage in enumerate(stages[:-1]):
        if stage.must_be_last is not None and not stages[position + 1].takes_frames:
            raise AdapterError(
                f"{stage.type} pooling is stage {position + 1} of {len(stages)}, but {stage.must_be_last}; move the "
                f"{stage.type} stage to the end of the list"
            )
    scorers = sorted({s.scorer for s in stages if s.guided and getattr(s, "scorer", None) is not None})
    if len(scorers) > 1:
        raise AdapterError(
            f"question-guided stages name different scorers {scorers}; one config uses one scorer, so give the "
            "same 'scorer' to every stage (or leave it out and pass scorer= to apply_adapter)"
        )
    return stages
