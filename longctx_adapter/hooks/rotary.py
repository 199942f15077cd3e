"""Visual context window extension through the decoder's rotary module (1-D RoPE, LLaVA family).

Position ids are never touched (gapped or fractional ids corrupt mask building and varlen attention); instead a
forward hook on `language_model.rotary_emb` replaces the cos/sin rows of a call that contains video:
- `scope="all"`: every row of a sequence with video gets the extended frequencies (the paper's equations), and
  so do its decode steps, so queries and the keys already in the cache rotate alike;
- `scope="visual"`: only visual tokens' rows change; text keeps stock RoPE.
A pre-hook on the decoder records how many tokens the cache already holds, so chunked prefill and a pre-filled
cache find their columns. The per-sequence plan is remembered per cache object, so a manual decode loop that
passes the cache back keeps the same rotation. The call's plan and the pre-hook's offset reach the rotary hook
through the handle's per-thread call state (hooks/handle.py, CallState), the one place hooks share state.
The new rows are computed by the pure `ops.rope.rope_cos_sin` (bit-identical to the stock module for integer
positions), one batch row at a time since every row has its own frequencies.

Rule for a model's own `rope_parameters`: "default" composes trivially; "linear" (e.g. LLaVA-NeXT-Video's
factor 2) divides the extended frequencies by its factor, i.e. the visual extension is computed on the base
frequencies and the checkpoint's own position interpolation is applied on top, exactly as the stock module
applies it to the base frequencies. Other rope types are refused when a visual extension is requested.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.rope import default_inv_freq, inv_freq_for, rope_cos_sin, scale_factor, visual_position_shift


@dataclass(frozen=True)
class RopeBase:
    """The stock rotary of a decoder, read once from its config."""

    head_dim: int
    theta: float
    partial_rotary_factor: float
    model_factor: float  # the checkpoint's own linear factor (1.0 for default RoPE)

    @classmethod
    def from_text_config(cls, text_config) -> RopeBase:
        params = dict(getattr(text_config, "rope_parameters", None) or {})
        rope_type = params.get("rope_type", "default")
        if rope_type not in ("default", "linear"):
            raise AdapterError(
                f"the model already uses rope_type {rope_type!r}; the visual extension composes only with "
                "'default' and 'linear' RoPE. Pass rope=None, or open an issue with your checkpoint"
            )
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        theta = params.get("rope_theta", getattr(text_config, "rope_theta", None))
        if theta is None:
            raise AdapterError("cannot find rope_theta in the text config; the visual extension needs the RoPE base")
        return cls(
            head_dim=int(head_dim),
            theta=float(theta),
            partial_rotary_factor=float(params.get("partial_rotary_factor", 1.0) or 1.0),
            model_factor=float(params.get("factor", 1.0)) if rope_type == "linear" else 1.0,
        )


@dataclass
class RopePlan:
    """What one sequence (batch) needs: which rows change, with which frequencies or positions."""

    spec: dict
    visual: torch.Tensor  # (B, L_prompt) bool
    factors: list[float]  # s per row (1.0 = unchanged)
    changed: torch.Tensor  # (B,) bool: rows whose s > 1
    inv_freq: torch.Tensor | None  # (B, d/2) extended frequencies (yarn/linear/ntk)
    scaling: torch.Tensor | None  # (B,) attention scaling
    shift: torch.Tensor | None = None  # (B, L_prompt) float64: how far back each position moves (interpolate)


def plan_rope(spec: dict, base: RopeBase, visual: torch.Tensor, extent: list | None = None) -> RopePlan | None:
    """Per-row factor s = max(1, visual extent / visual_window) (or the fixed factor); None when no row changes.

    The extent is the number of visual tokens (1-D RoPE) or, for M-RoPE, the temporal span in positions.
    """
    counts = visual.sum(dim=1).tolist() if extent is None else list(extent)
    if not any(counts):
        return None
    fixed = spec.get("factor")
    window = spec.get("visual_window")

    def factor(n):
        if not n:
            return 1.0
        if fixed is not None:
            return float(fixed)
        return scale_factor(int(n), window) if float(n).is_integer() else max(1.0, n / window)

    factors = [factor(n) for n in counts]
    changed = torch.tensor([f > 1.0 for f in factors], device=visual.device)
    if not bool(changed.any()):
        return None
    plan = RopePlan(spec, visual, factors, changed, None, None)
    if spec["type"] == "interpolate":
        n_visual = visual.sum(dim=1, keepdim=True).clamp_min(1).to(torch.float64)
        step = 1.0 / float(fixed) if fixed is not None else torch.clamp(window / n_visual, max=1.0)
        step = torch.as_tensor(step, dtype=torch.float64, device=visual.device).expand(visual.shape[0], 1)
        plan.shift = visual_position_shift(visual, step)
        return plan
    pure_spec = {k: v for k, v in spec.items() if v is not None and k not in ("scope", "factor", "mrope_axes")}
    rows, scales = [], []
    for f in factors:
        inv, scale = inv_freq_for(
            pure_spec, base.head_dim, base.theta, f, base.partial_rotary_factor, device=visual.device
        )
        rows.append(inv / base.model_factor if base.model_factor != 1.0 else inv)
        scales.append(scale)
    plan.inv_freq = torch.stack(rows)
    plan.scaling = torch.tensor(scales, dtype=torch.float32, device=visual.device)
    return plan


def _expanded(plan: RopePlan, batch: int) -> RopePlan:
    """generate() repeats each row for beams / num_return_sequences after the plan was made: follow it."""
    rows = plan.visual.shape[0]
    if batch == rows:
        return plan
    if batch % rows:
        raise AdapterError(f"internal: the decoder got {batch} rows for a plan of {rows}; please report this")
    rep = batch // rows

    def expand(value):
        return None if value is None else value.repeat_interleave(rep, dim=0)

    return RopePlan(
        plan.spec,
        expand(plan.visual),
        [f for f in plan.factors for _ in range(rep)],
        expand(plan.changed),
        expand(plan.inv_freq),
        expand(plan.scaling),
        expand(plan.shift),
    )


class RopeHooks:
    """The decoder pre-hook and the rotary forward hook of one handle, and the plans remembered per cache.

    calls: the handle's per-thread CallState; `rope_plan` is set for the duration of an adapted call,
    `rope_step` by the decoder pre-hook for the rotary hook of the same pass.
    """

    def __init__(self, spec: dict, base: RopeBase, decoder, rotary, calls):
        self.spec = spec
        self.base = base
        # M-RoPE (Qwen-VL): position ids are (3, B, L) and the module recomposes per-axis frequency sections.
        self.mrope = getattr(rotary, "recomposition_frequencies", None)
        if self.mrope is not None and spec["type"] == "interpolate":
            raise AdapterError("rope type 'interpolate' is for 1-D RoPE; on M-RoPE models use yarn, linear or ntk")
        self.calls = calls
        self._by_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._stock_inv = default_inv_freq(base.head_dim, base.theta, base.partial_rotary_factor)
        if base.model_factor != 1.0:
            self._stock_inv = self._stock_inv / base.model_factor
        self.handles = [
            decoder.register_forward_pre_hook(self._before_decoder, with_kwargs=True),
            rotary.register_forward_hook(self._after_rotary, with_kwargs=True),
        ]

    @property
    def active(self) -> RopePlan | None:
        """The plan of the adapted call in progress on this thread."""
        return self.calls.rope_plan

    def remember(self, cache, plan: RopePlan) -> None:
        self._by_cache[cache] = plan

    def plan_for(self, input_ids: torch.Tensor, token_id: int, extent: list | None = None) -> RopePlan | None:
        return plan_rope(self.spec, self.base, input_ids == token_id, extent)

    # --- hooks ------------------------------------------------------------------------------------------
    def _before_decoder(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        plan = self.active
        if plan is not None and cache is not None:
            self._by_cache[cache] = plan
        elif plan is None and cache is not None:
            plan = self._by_cache.get(cache)
        offset = int(cache.get_seq_length()) if cache is not None else 0
        self.calls.rope_step = (plan, offset)

    def _after_rotary(self, module, args, kwargs, output):
        plan, offset = self.calls.rope_step or (None, 0)
        if plan is None:
            return None
        position_ids = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
        cos, sin = output
        if self.mrope is not None:
            position_ids = position_ids.expand(3, -1, -1)
        if position_ids.dim() != (3 if self.mrope is not None else 2) or cos.dim() != 3:
            return None
        rows = plan.visual.shape[0]
        if position_ids.shape[-2] == 1 and rows > 1:
            # A bare forward shares one (1, L) position row across the batch; the plan differs per row.
            position_ids = position_ids.expand(*position_ids.shape[:-2], rows, -1)
            cos, sin = cos.expand(rows, -1, -1), sin.expand(rows, -1, -1)
        batch, length = position_ids.shape[-2:]
        plan = _expanded(plan, batch)
        cols = torch.arange(offset, offset + length, device=position_ids.device)
        prompt_len = plan.visual.shape[1]
        in_prompt = cols < prompt_len
        visual = torch.zeros(batch, length, dtype=torch.bool, device=position_ids.device)
        visual[:, in_prompt] = plan.visual[:, cols[in_prompt]].to(position_ids.device)
        rows = plan.changed.to(position_ids.device)[:, None]
        target = rows & (visual if plan.spec["scope"] == "visual" else torch.ones_like(visual))
        if not bool(target.any()):
            return None
        if self.mrope is not None:
            new_cos, new_sin = self._extended_mrope(plan, position_ids, cos.dtype)
        else:
            new_cos, new_sin = self._extended(plan, position_ids, cols, in_prompt, cos.dtype)
        mask = target[..., None]
        return torch.where(mask, new_cos, cos), torch.where(mask, new_sin, sin)

    def _extended(self, plan: RopePlan, position_ids, cols, in_prompt, dtype):
        if plan.spec["type"] == "interpolate":
            prompt_shift = plan.shift.to(position_ids.device)
            shift = (
                prompt_shift[:, -1:].expand(position_ids.shape).clone()
            )  # decode steps: every visual token is behind
            shift[:, in_prompt] = prompt_shift[:, cols[in_prompt]]
            positions = (position_ids.to(torch.float64) - shift).float()
            return rope_cos_sin(self._stock_inv, positions, dtype=dtype)
        rows = [
            rope_cos_sin(inv, pos, scale, dtype=dtype)
            for inv, pos, scale in zip(plan.inv_freq, position_ids, plan.scaling.tolist())
        ]
        return torch.stack([cos for cos, _ in rows]), torch.stack([sin for _, sin in rows])

    def _extended_mrope(self, plan: RopePlan, position_ids, dtype):
        """The module's own recipe (per-axis cos/sin, section recomposition) with extended axes' frequencies."""
        extended_axes = {"thw".index(axis) for axis in plan.spec.get("mrope_axes", ["t"])}
        half = self._stock_inv.shape[0]
        per_axis = []
        for axis in range(3):
            rows = [
                rope_cos_sin(inv if axis in extended_axes else self._stock_inv, pos, scale)
                for inv, pos, scale in zip(plan.inv_freq, position_ids[axis], plan.scaling.tolist())
            ]
            # rope_cos_sin duplicates the frequencies (cat((f, f))); the module recomposes the sections of one half
            per_axis.append(
                (torch.stack([c[..., :half] for c, _ in rows]), torch.stack([s[..., :half] for _, s in rows]))
            )
        cos = self.mrope(torch.stack([c for c, _ in per_axis]))
        sin = self.mrope(torch.stack([s for _, s in per_axis]))
        return cos.to(dtype), sin.to(dtype)

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles.clear()
