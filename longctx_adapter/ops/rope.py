"""RoPE inverse frequencies and cos/sin for the visual context window extension
(docs/methods.md#visual-yarn).

Pure functions on torch tensors (no ``transformers`` import), one per variant, in the style of
``transformers.modeling_rope_utils``. Each variant that HF also ships reproduces HF 5.24's numbers
bit for bit on the same device, so the adapter can swap frequencies without touching anything else:

- ``default_inv_freq``  == every model's ``compute_default_rope_parameters`` (with partial rotary);
- ``linear_inv_freq``   == ``ROPE_INIT_FUNCTIONS["linear"]``;
- ``ntk_inv_freq``      == ``ROPE_INIT_FUNCTIONS["dynamic"]`` evaluated where its base is ``base * s ** (d / (d - 2))``;
- ``yarn_inv_freq``     == ``ROPE_INIT_FUNCTIONS["yarn"]`` with ``original_max_position_embeddings`` = the
  *visual* window, ``beta_fast = beta``, ``beta_slow = alpha``;
- ``rope_cos_sin``      == ``LlamaRotaryEmbedding.forward`` / ``Qwen2RotaryEmbedding.forward``.

Every variant leaves the frequencies untouched when the scale ``s <= 1`` ("no change when s <= 1").

YaRN as implemented by HF versus the paper's formula
----------------------------------------------------
Let ``d`` be the rotary dim, ``i = 0 .. d/2 - 1`` the frequency index, ``theta_i = base ** (-2i/d)``,
``lambda_i = 2 pi / theta_i``, ``r_i = L / lambda_i = L / (2 pi) * base ** (-2i/d)`` (``L`` = visual window).
The paper (docs/methods.md#visual-yarn) uses ``gamma_i = clamp((r_i - alpha) / (beta - alpha), 0, 1)`` and
``theta_i' = (gamma_i + (1 - gamma_i) / s) * theta_i``. HF blends the same two frequencies
(``theta/s * (1 - e) + theta * e`` with ``e = gamma``) but builds the ramp over the *index* ``i``:
``find_correction_dim(n)`` is the fractional ``i`` at which ``r_i = n``; ``low = i(r = beta)``,
``high = i(r = alpha)`` and ``gamma_i = 1 - clamp((i - low) / (high - low), 0, 1)``. Because ``ln r_i`` is
linear in ``i``, with ``truncate=False`` this is exactly

    gamma_i(HF) = clamp((ln r_i - ln alpha) / (ln beta - ln alpha), 0, 1),

i.e. the paper's ramp in ``ln r`` instead of ``r``. Consequences:

1. Same break points: ``gamma = 1`` iff ``r_i >= beta`` and ``gamma = 0`` iff ``r_i <= alpha`` in both, so every
   frequency outside the ramp band is identical (up to float rounding of ``theta/s``).
2. Inside the band the two differ: ``log`` is concave, so HF's gamma is larger (keeps frequencies closer to
   stock). Example: d=128, base=1e6, L=6272: band i = 16..32; at i=24 (r~5.6) paper gamma 0.15, HF 0.50
   (0.47 with ``truncate=True``).
3. ``truncate=True`` (HF's default, ours too) floors ``low`` and ceils ``high`` to integers: the band is linear
   in ``i`` between integer end points. The set of saturated indices is unchanged (an integer ``i <= floor(low)``
   still has ``r_i >= beta``), but the ordering in 2 no longer holds everywhere: next to ``r = beta`` the widened
   band can keep less than the paper (d=128, base=1e6, L=6272, i=16: HF 0.94, paper 0.99).
4. HF clamps ``low >= 0`` and ``high <= d - 1`` (sic: ``d - 1``, not ``d/2 - 1``). When ``L < 2 pi beta``
   (~201 for beta=32; e.g. a *temporal* window of M-RoPE) the highest frequency already has ``r_0 < beta``:
   HF then starts its ramp at ``i = 0`` with gamma 1, the paper gives ``gamma_0 = (r_0 - alpha)/(beta - alpha)``.
5. When ``low == high`` HF widens the ramp by 0.001 to avoid dividing by zero.

``yarn_inv_freq`` follows HF (the design says "use it or test against it"); ``yarn_inv_freq_paper`` is the
literal paper formula, kept for ablations and for tests that pin down the relation above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from longctx_adapter.errors import AdapterError

__all__ = [
    "default_inv_freq",
    "visual_position_shift",
    "yarn_inv_freq",
    "yarn_inv_freq_paper",
    "linear_inv_freq",
    "ntk_inv_freq",
    "interpolate_positions",
    "rope_cos_sin",
    "scale_factor",
    "inv_freq_for",
    "ROPE_TYPES",
]

ROPE_TYPES = ("yarn", "linear", "ntk", "interpolate")


# --- validation -------------------------------------------------------------------------------


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _rotary_dim(head_dim, partial_rotary_factor, *, even: bool = False, min_dim: int = 2) -> int:
    """The rotary dim exactly as HF derives it: ``int(head_dim * partial_rotary_factor)``."""
    if not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim <= 0:
        raise AdapterError(f"head_dim must be a positive int, got {head_dim!r}; pass the attention head size")
    if not _is_real(partial_rotary_factor) or not 0 < partial_rotary_factor <= 1:
        raise AdapterError(
            f"partial_rotary_factor must be in (0, 1], got {partial_rotary_factor!r}; "
            "pass the model's rope_parameters['partial_rotary_factor'] or 1.0"
        )
    dim = int(head_dim * partial_rotary_factor)
    if dim < min_dim:
        raise AdapterError(
            f"rotary dim int(head_dim * partial_rotary_factor) = {dim} is below {min_dim}; "
            "check head_dim and partial_rotary_factor"
        )
    if even and dim % 2:
        raise AdapterError(f"rotary dim {dim} is odd; this RoPE variant needs an even rotary dim (as HF's does)")
    return dim


def _check_base(base) -> float:
    if not _is_real(base) or base <= 1:
        raise AdapterError(f"RoPE base (rope_theta) must be a finite number > 1, got {base!r}")
    return base


def _check_factor(factor) -> float:
    if not _is_real(factor) or factor <= 0:
        raise AdapterError(
            f"RoPE scale factor must be a finite number > 0, got {factor!r}; use scale_factor(visual_tokens, window)"
        )
    return factor


def _check_window(window, name: str = "window") -> None:
    if not _is_real(window) or window <= 0:
        raise AdapterError(
            f"{name} must be a positive number of positions, got {window!r}; pass the model's visual training "
            "window (L_train_v, in positions)"
        )


def _check_alpha_beta(alpha, beta) -> None:
    if not _is_real(alpha) or not _is_real(beta) or alpha <= 0:
        raise AdapterError(
            f"YaRN alpha and beta must be finite numbers with alpha > 0, got alpha={alpha!r} beta={beta!r}"
        )
    if alpha >= beta:
        raise AdapterError(
            f"YaRN needs alpha < beta (ramp from alpha to beta rotations), got alpha={alpha!r} beta={beta!r}; "
            "the defaults are alpha=1, beta=32"
        )


def _check_attention_factor(attention_factor) -> None:
    if attention_factor is not None and (not _is_real(attention_factor) or attention_factor <= 0):
        raise AdapterError(
            f"attention_factor must be None (YaRN's 0.1*ln(s)+1) or a number > 0, got {attention_factor!r}"
        )


# --- inverse frequencies ------------------------------------------------------------------------


def default_inv_freq(head_dim: int, base: float, partial_rotary_factor: float = 1.0, device=None) -> torch.Tensor:
    """Stock RoPE inverse frequencies, bit-identical to HF's default init (the reference every variant scales)."""
    dim = _rotary_dim(head_dim, partial_rotary_factor)
    base = _check_base(base)
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))


def linear_inv_freq(
    head_dim: int, base: float, factor: float, partial_rotary_factor: float = 1.0, device=None
) -> torch.Tensor:
    """Position interpolation (HF "linear"): dividing frequencies by s is dividing every position by s."""
    inv_freq = default_inv_freq(head_dim, base, partial_rotary_factor, device)
    if _check_factor(factor) <= 1:
        return inv_freq
    inv_freq /= factor  # in place, exactly as HF does
    return inv_freq


def ntk_inv_freq(
    head_dim: int, base: float, factor: float, partial_rotary_factor: float = 1.0, device=None
) -> torch.Tensor:
    """NTK-aware scaling: raise the base to ``base * s ** (d / (d - 2))`` so the lowest frequency is divided by s.

    Equals HF's "dynamic" init when its base ``base * (f * seq_len / max_pos - (f - 1)) ** (d / (d - 2))`` has
    ``f * seq_len / max_pos - (f - 1) == s`` (e.g. ``f = 1``, ``seq_len = s * max_pos``).
    """
    dim = _rotary_dim(head_dim, partial_rotary_factor, min_dim=3)
    base = _check_base(base)
    if _check_factor(factor) <= 1:
        return default_inv_freq(head_dim, base, partial_rotary_factor, device)
    base = base * factor ** (dim / (dim - 2))
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))


def _yarn_attention_scaling(factor: float, attention_factor) -> float:
    # HF's get_mscale(factor) with mscale=1; only called with factor > 1.
    return 0.1 * math.log(factor) + 1.0 if attention_factor is None else float(attention_factor)


def _check_yarn_args(head_dim, base, factor, original_window, alpha, beta, attention_factor, partial_rotary_factor):
    dim = _rotary_dim(head_dim, partial_rotary_factor, even=True)
    _check_base(base)
    _check_factor(factor)
    _check_window(original_window, "original_window")
    _check_alpha_beta(alpha, beta)
    _check_attention_factor(attention_factor)
    return dim


def yarn_inv_freq(
    head_dim: int,
    base: float,
    factor: float,
    original_window: float,
    alpha: float = 1.0,
    beta: float = 32.0,
    attention_factor: float | None = None,
    truncate: bool = True,
    partial_rotary_factor: float = 1.0,
    device=None,
) -> tuple[torch.Tensor, float]:
    """YaRN "NTK-by-parts" with the visual window as original length, numerically HF's ``_compute_yarn_parameters``.

    High frequencies (many rotations inside the window: ``r > beta``) are kept, low ones (``r < alpha``) are
    interpolated by ``s``, a ramp blends the band in between (see the module docstring for how HF's ramp relates
    to the paper's). Returns ``(inv_freq, attention_scaling)``; scaling is YaRN's ``0.1 ln s + 1`` when
    ``attention_factor`` is None. ``factor <= 1`` returns the stock frequencies and scaling 1.0.
    """
    dim = _check_yarn_args(
        head_dim, base, factor, original_window, alpha, beta, attention_factor, partial_rotary_factor
    )
    if not isinstance(truncate, bool):
        raise AdapterError(f"truncate must be true or false, got {truncate!r}")
    if factor <= 1:
        return default_inv_freq(head_dim, base, partial_rotary_factor, device), 1.0

    def find_correction_dim(num_rotations):
        # The (fractional) frequency index i at which r_i == num_rotations.
        return (dim * math.log(original_window / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = find_correction_dim(beta), find_correction_dim(alpha)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)

    pos_freqs = base ** (torch.arange(0, dim, 2).to(device=device, dtype=torch.float) / dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp.to(device=device, dtype=torch.float)  # this is gamma_i
    inv_freq = inv_freq_interpolation * (1 - extrapolation_factor) + inv_freq_extrapolation * extrapolation_factor
    return inv_freq, _yarn_attention_scaling(factor, attention_factor)


def yarn_inv_freq_paper(
    head_dim: int,
    base: float,
    factor: float,
    original_window: float,
    alpha: float = 1.0,
    beta: float = 32.0,
    attention_factor: float | None = None,
    partial_rotary_factor: float = 1.0,
    device=None,
) -> tuple[torch.Tensor, float]:
    """The paper's YaRN formula literally (ramp linear in ``r_i``), for ablations against HF's log-ramp.

    Computed in float64 from the stock float32 frequencies, so frequencies with ``gamma = 1`` are bit-identical
    to ``default_inv_freq``. No truncation or clamping of the band (the paper has none).
    """
    _check_yarn_args(head_dim, base, factor, original_window, alpha, beta, attention_factor, partial_rotary_factor)
    theta = default_inv_freq(head_dim, base, partial_rotary_factor, device)
    if factor <= 1:
        return theta, 1.0
    theta64 = theta.double()
    r = original_window * theta64 / (2 * math.pi)  # r_i = L / lambda_i, lambda_i = 2 pi / theta_i
    gamma = torch.clamp((r - alpha) / (beta - alpha), 0, 1)
    inv_freq = ((gamma + (1 - gamma) / factor) * theta64).to(torch.float32)
    return inv_freq, _yarn_attention_scaling(factor, attention_factor)


# --- positions and cos/sin -----------------------------------------------------------------------


def interpolate_positions(positions: torch.Tensor, visual_mask: torch.Tensor, window: int) -> torch.Tensor:
    """V2PE-style position compression: each row's visual tokens together advance by at most ``window`` positions.

    Every visual token advances the position by ``step = min(1, window / n_visual_in_row)`` instead of 1; text
    tokens advance by 1, so text keeps its relative step and order is kept. Computed as
    ``positions - (1 - step) * (visual tokens in (0, j])``, which also works for offset or padded position rows.
    The first token of a row never moves (it has no predecessor to advance from), so a row that *starts* with a
    visual run spans ``(n - 1) * step`` for it; elsewhere a visual run of n tokens spans ``n * step`` positions
    (``window`` when it is the row's only visual run). Rows with ``n_visual <= window`` come back exactly as
    ``positions.float()``. Returns float32 (what RoPE consumes; HF casts positions with ``.float()``).
    """
    _check_window(window)
    if not isinstance(positions, torch.Tensor) or not isinstance(visual_mask, torch.Tensor):
        raise AdapterError("positions and visual_mask must be torch tensors of shape (batch, seq_len)")
    if positions.dim() != 2:
        raise AdapterError(f"positions must have shape (batch, seq_len), got {tuple(positions.shape)}")
    if visual_mask.shape != positions.shape:
        raise AdapterError(
            f"visual_mask shape {tuple(visual_mask.shape)} must equal positions shape {tuple(positions.shape)}"
        )
    if visual_mask.dtype != torch.bool:
        raise AdapterError(f"visual_mask must be a bool tensor, got {visual_mask.dtype}; pass input_ids == token_id")
    if positions.is_floating_point() and not torch.equal(positions, positions.round()):
        raise AdapterError("positions must be integer-valued (stock position ids); got fractional values")
    visual_mask = visual_mask.to(positions.device)
    n_visual = visual_mask.sum(dim=1, keepdim=True)  # (B, 1)
    step = torch.clamp(window / n_visual.clamp_min(1).to(torch.float64), max=1.0)
    compressed = (positions.to(torch.float64) - visual_position_shift(visual_mask, step)).to(torch.float32)
    return torch.where(n_visual > window, compressed, positions.float())


def visual_position_shift(visual_mask: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """How far back each position moves when every visual token advances by ``step`` (float64, (B, L)).

    ``(1 - step) * (visual tokens in (0, j])``; ``step`` broadcasts per row (shape (B, 1)). Shared by
    ``interpolate_positions`` and the rotary hook, which applies it chunk by chunk.
    """
    advanced = torch.cumsum(visual_mask, dim=1) - visual_mask[:, :1].to(torch.int64)  # visual tokens in (0, j]
    return (1.0 - step.to(torch.float64)) * advanced


def rope_cos_sin(
    inv_freq: torch.Tensor, positions: torch.Tensor, attention_scaling: float = 1.0, dtype=torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin rows for (possibly fractional) positions, bit-identical to HF's rotary ``forward`` for integers.

    Uses HF 5.24's formulation (``positions[..., None].float() * inv_freq``, then ``cat((f, f))``); it is a single
    correctly rounded product per entry, so it is also unaffected by TF32 matmul settings. Any leading shape of
    ``positions`` works; output is ``(*positions.shape, 2 * len(inv_freq))``.
    """
    if not isinstance(inv_freq, torch.Tensor) or inv_freq.dim() != 1:
        raise AdapterError("inv_freq must be a 1-D tensor (one inverse frequency per rotary pair)")
    if not isinstance(positions, torch.Tensor):
        raise AdapterError("positions must be a torch tensor")
    if not _is_real(attention_scaling):
        raise AdapterError(f"attention_scaling must be a finite number, got {attention_scaling!r}")
    freqs = positions[..., None].float() * inv_freq.to(device=positions.device, dtype=torch.float)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = emb.cos() * attention_scaling
    sin = emb.sin() * attention_scaling
    return cos.to(dtype=dtype), sin.to(dtype=dtype)


# --- dispatch -----------------------------------------------------------------------------------


def scale_factor(visual_tokens: int, window: int) -> float:
    """The per-input scale ``s = max(1, visual_tokens / window)``: no change while the video fits the window."""
    if not isinstance(visual_tokens, int) or isinstance(visual_tokens, bool) or visual_tokens < 0:
        raise AdapterError(f"visual_tokens must be an int >= 0, got {visual_tokens!r}")
    _check_window(window)
    return max(1.0, visual_tokens / window)


def inv_freq_for(
    rope: Mapping,
    head_dim: int,
    base: float,
    factor: float,
    partial_rotary_factor: float = 1.0,
    device=None,
) -> tuple[torch.Tensor, float]:
    """Frequencies for an adapter ``rope`` spec; returns ``(inv_freq, attention_scaling)``.

    ``rope["type"]``: "yarn" | "linear" | "ntk" | "interpolate" ("interpolate" changes positions, see
    ``interpolate_positions``, so its frequencies are the stock ones). ``factor`` is the per-input ``s``; an
    explicit ``rope["factor"]`` (a fixed factor) replaces it and must be >= 1 (a value below 1 is refused
    here, while a computed ``s <= 1`` just means "no change"). YaRN keys: ``visual_window`` (required),
    ``alpha`` (1), ``beta`` (32), ``attention_factor``: missing/None -> 1.0 (the paper uses no temperature),
    True or "yarn" -> YaRN's ``0.1 ln s + 1``, a number -> that number (YaRN only).
    """
    if not isinstance(rope, Mapping):
        raise AdapterError(f"rope must be a dict, got {type(rope).__name__}")
    kind = rope.get("type")
    if kind not in ROPE_TYPES:
        raise AdapterError(f"unknown rope type {kind!r}; use one of {list(ROPE_TYPES)}")

    fixed = rope.get("factor")
    if fixed is not None:
        if not _is_real(fixed) or fixed < 1:
            raise AdapterError(
                f"rope['factor'] must be a number >= 1 (a fixed scale in place of the per-input s), got {fixed!r}; "
                "omit it to use s = visual tokens / visual_window"
            )
        factor = fixed
    _check_factor(factor)

    window = rope.get("visual_window")
    if window is not None or kind in ("yarn", "interpolate"):
        if window is None:
            raise AdapterError(
                f"rope type {kind!r} needs rope['visual_window'] (the model's visual training window L_train_v, "
                "in positions); no preset knows it for this model, so pass it explicitly"
            )
        _check_window(window, "rope['visual_window']")

    attention = rope.get("attention_factor")
    if kind != "yarn" and attention is not None:
        raise AdapterError(f"rope['attention_factor'] only applies to type 'yarn', not {kind!r}; remove it")

    if kind == "yarn":
        if attention is None or attention is False:
            attention = 1.0
        elif attention is True or attention == "yarn":
            attention = None
        elif not _is_real(attention):
            raise AdapterError(
                f"rope['attention_factor'] must be None, true, 'yarn' or a number > 0, got {attention!r}"
            )
        alpha = rope.get("alpha")
        beta = rope.get("beta")
        return yarn_inv_freq(
            head_dim,
            base,
            factor,
            window,
            alpha=1.0 if alpha is None else alpha,
            beta=32.0 if beta is None else beta,
            attention_factor=attention,
            partial_rotary_factor=partial_rotary_factor,
            device=device,
        )
    if kind == "linear":
        return linear_inv_freq(head_dim, base, factor, partial_rotary_factor, device), 1.0
    if kind == "ntk":
        return ntk_inv_freq(head_dim, base, factor, partial_rotary_factor, device), 1.0
    return default_inv_freq(head_dim, base, partial_rotary_factor, device), 1.0
