"""Capture q, k and v where attention runs: at ``torch.nn.functional.scaled_dot_product_attention``.

:func:`capture_attention` is a context manager: while it is active, every call of
``torch.nn.functional.scaled_dot_product_attention`` (SDPA) is recorded, then run unchanged. What is recorded
is what attention receives, ``[batch, heads, tokens, head_dim]`` after QK-norm and RoPE, with the call's scale
and GQA (``enable_gqa`` or fewer K/V heads than query heads); a fused ``qkv`` projection and
``nn.MultiheadAttention`` (which calls SDPA when ``need_weights=False``) need nothing special. A custom
attention function that does not call SDPA hands its tensors in with :meth:`AttentionCapture.record`.

Call sites become layers: the i-th attention call of a forward pass is layer i (or the ``layer=`` given to
:meth:`~AttentionCapture.record`). A forward pass begins at each call of ``model`` (when given) or at
:meth:`~AttentionCapture.begin_pass`; each pass is tagged with its step (:attr:`AttentionCapture.step`, default
the pass number), so a denoising loop records one pass per step. Batch items are numbered across the passes of
one step (a classifier-free-guidance branch run as its own pass is the next batch item). ``steps=`` and
``batch_items=`` choose what is kept; query rows are sampled per layer (seeded, the same rows for every step and
item). :meth:`AttentionCapture.samples` returns the :class:`~sparsesim.search.samples.Samples` of one step and
item, which the search consumes unchanged.

Extra tokens (joint text tokens of an MM-DiT, attention sinks; docs/DESIGN.md, Extra tokens): with
``extra_tokens=E`` every call carries the layout's ``N`` tokens and ``E`` more, after the layout (``extra_at="end"``)
or before it (``"start"``); the sampled query rows are layout tokens (named by their sequence positions) and k, v
cover the whole sequence, so the samples carry the extra tokens.

Refused, in one line naming the mismatch: tokens that are not the layout's (and the extra ones), keys that are
not the queries' tokens, a causal call with extra tokens after the layout, masks other than none or causal, head
counts that do not divide, a layer whose shape or scale changes, and a pass whose layers differ from the first
pass's. Only the module attribute is patched: code that imported the function by name, compiled graphs and other
threads are not seen.

Example:
    >>> with capture_attention(model, layout=(16, 30, 52), steps=range(0, 50, 10)) as cap:  # doctest: +SKIP
    ...     pipe(prompt, num_inference_steps=50)
    >>> samples = cap.samples(step=20, batch_item=0)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparsesim.search.samples import LayerSamples, Samples, extras_pattern, sample_rows
from sparsesim.simulator.errors import ConfigError

#: Attribute our SDPA replacements carry (this module's and :func:`sparsesim.kernels.apply.apply_plan`'s, which
#: uses the same name): one replacement at a time.
PATCH_MARK = "__sparsesim_patch__"
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
#: An additive float mask entry at or below this blocks its key.
_BLOCKED = -1e4


@dataclass(frozen=True)
class CapturedLayer:
    """What one layer's attention calls look like (the same in every pass)."""

    index: int
    name: str
    heads: int
    heads_kv: int
    head_dim: int
    scale: float
    causal: bool
    rows: np.ndarray  # (rows,) the sampled query positions


@dataclass(frozen=True)
class CapturedCall:
    """One kept call of one layer for one batch item: sampled q rows, whole k and v, float32.

    ``q`` has the call's scale folded in (multiplied by ``scale * sqrt(head_dim)``), so ``softmax(q k^T /
    sqrt(head_dim))``, which the search computes, is the model's own attention."""

    layer: int
    step: int
    item: int
    q: np.ndarray  # (heads, rows, head_dim)
    k: np.ndarray  # (heads_kv, tokens, head_dim)
    v: np.ndarray  # (heads_kv, tokens, head_dim)


def _show(layout: Sequence[int]) -> str:
    return "x".join(map(str, layout))


class AttentionCapture:
    """Attention calls recorded over forward passes (see the module docstring); made by :func:`capture_attention`.

    Also usable alone: call :meth:`begin_pass` before each forward pass and :meth:`record` from an attention
    function."""

    def __init__(self, *, layout: Sequence[int], rows: int = 64, seed: int = 0,
                 steps: Collection[int] | None = None, batch_items: Collection[int] | None = None,
                 extra_tokens: int = 0, extra_at: str = "end") -> None:
        if not 1 <= len(layout) <= 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layout):
            raise ConfigError(f"layout {list(layout)}; allowed: 1 to 3 positive integers")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"rows={rows!r}; allowed: an integer >= 1")
        self.layout = tuple(layout)
        ref = extras_pattern(self.layout, extra_tokens, extra_at)  # checks extra_tokens and extra_at
        self.extra_tokens = ref.extra_tokens
        self.extra_at = ref.extra_at
        self.layout_start = ref.layout_start
        #: Tokens of every call: the layout's and the extra ones.
        self.tokens = ref.seq_tokens
        self.rows = rows
        self.seed = seed
        self.keep_steps = None if steps is None else frozenset(int(s) for s in steps)
        self.keep_items = None if batch_items is None else frozenset(int(b) for b in batch_items)
        #: The step tag of the passes the model hook begins; None: the pass number.
        self.step: int | None = None
        self._layers: dict[int, CapturedLayer] = {}
        self._calls: dict[tuple[int, int, int], CapturedCall] = {}
        self._passes = 0
        self._in_pass = False
        self._pass_step = 0
        self._pass_layers: dict[int, str] = {}
        self._pass_item0 = 0
        self._pass_batch = 0
        self._first: tuple[tuple[int, str], ...] | None = None
        self._step_items: dict[int, int] = {}
        #: Names of the modules being run (innermost last), kept by :func:`capture_attention`'s hooks.
        self.module_stack: list[str] = []
        #: Where kept calls go instead of being stored: ``sink(layer meta, step, batch item, q rows [heads, rows,
        #: head_dim], k, v [heads_kv, tokens, head_dim])``, torch tensors on the call's device, scale not folded
        #: (:func:`sparsesim.search.stats.collect_statistics`); None: stored as :class:`CapturedCall`.
        self.sink: Callable[..., None] | None = None

    # --------------------------------------------------------------------------------------- passes
    def begin_pass(self, step: int | None = None) -> None:
        """Start a forward pass (the next attention call is layer 0) tagged ``step`` (default: the pass number);
        the pass before it is checked against the first."""
        self.end_pass()
        self._in_pass = True
        self._pass_step = self._passes if step is None else int(step)
        self._pass_layers = {}
        self._pass_item0 = self._step_items.get(self._pass_step, 0)
        self._pass_batch = 0
        self.module_stack.clear()

    def end_pass(self) -> None:
        """Finish the current pass (if any): its layers must be the first pass's."""
        if not self._in_pass:
            return
        self._in_pass = False
        seen = tuple(sorted(self._pass_layers.items()))
        index = self._passes
        self._passes += 1
        self._step_items[self._pass_step] = self._pass_item0 + self._pass_batch
        if not seen:
            return
        if self._first is None:
            self._first = seen
            return
        if len(seen) != len(self._first):
            raise ConfigError(f"forward pass {index} (step {self._pass_step}) made {len(seen)} attention calls; the "
                              f"first pass made {len(self._first)}: the layers must be the same in every pass")
        for (i, name), (j, first) in zip(seen, self._first, strict=True):
            if (i, name) != (j, first):
                raise ConfigError(f"forward pass {index} (step {self._pass_step}) has layer {i} {name!r} where the "
                                  f"first pass had layer {j} {first!r}: the layers must be the same in every pass")

    @property
    def passes(self) -> int:
        """Forward passes finished or begun."""
        return self._passes + int(self._in_pass)

    # --------------------------------------------------------------------------------------- calls
    def record(self, q: Any, k: Any, v: Any, *, layer: int | str | None = None, scale: float | None = None,
               is_causal: bool = False, enable_gqa: bool = False) -> None:
        """Record one attention call's ``q`` ``[batch, heads, tokens, head_dim]`` and ``k``/``v`` ``[batch,
        heads_kv, tokens, head_dim]`` (torch tensors, as SDPA takes them).

        ``layer``: None, the next layer of the pass; an int, that layer; a name (e.g. the attention module's),
        the next layer, named so. ``scale`` default ``1/sqrt(head_dim)``. ``enable_gqa`` is accepted for
        SDPA's signature: fewer K/V heads than query heads is GQA either way."""
        del enable_gqa
        if not self._in_pass:
            self.begin_pass(self.step)
        if isinstance(layer, bool) or (layer is not None and not isinstance(layer, (int, str))):
            raise ConfigError(f"layer={layer!r}; allowed: None, a layer number or a name")
        if isinstance(layer, int):
            if layer < 0:
                raise ConfigError(f"layer={layer}; allowed: a layer number >= 0")
            known = self._layers.get(layer)
            index, name = layer, known.name if known is not None else f"layer{layer}"
        else:
            index = len(self._pass_layers)
            while index in self._pass_layers:
                index += 1
            inner = self.module_stack[-1] if self.module_stack else ""
            name = layer if isinstance(layer, str) else inner or f"layer{index}"
        if index in self._pass_layers:
            raise ConfigError(f"layer {index} was recorded twice in forward pass {self._passes} (step "
                              f"{self._pass_step}); allowed: one call per layer and pass")
        self._pass_layers[index] = name
        if self.keep_steps is not None and self._pass_step not in self.keep_steps:
            return
        where = f"attention call {name!r} (layer {index}, step {self._pass_step})"
        shapes = [tuple(getattr(x, "shape", ())) for x in (q, k, v)]
        if any(len(s) != 4 for s in shapes):
            raise ConfigError(f"{where}: q {list(shapes[0])}, k {list(shapes[1])}, v {list(shapes[2])}; allowed: "
                              "4-D [batch, heads, tokens, head_dim] tensors")
        b, h, n, d = (int(x) for x in shapes[0])
        bk, hk, nk, dk = (int(x) for x in shapes[1])
        shown = _show(self.layout) + (f" with {self.extra_tokens} extra tokens" if self.extra_tokens else "")
        if n != self.tokens:
            hint = "" if self.extra_tokens or n < self.tokens else " (extra tokens? pass extra_tokens=)"
            raise ConfigError(f"{where}: {n} query tokens; the layout {shown} has {self.tokens}{hint}")
        if nk != n:
            raise ConfigError(f"{where}: {nk} keys for {n} queries (cross-attention); allowed: keys = queries = the "
                              f"layout {shown}'s {self.tokens} tokens")
        if is_causal and self.extra_tokens and self.extra_at == "end":
            raise ConfigError(f"{where}: a causal call with {self.extra_tokens} extra tokens after the layout; "
                              "allowed: causal calls with the extra tokens at the start (extra_at='start', sinks)")
        if shapes[2] != shapes[1]:
            raise ConfigError(f"{where}: v {list(shapes[2])} differs from k {list(shapes[1])}; allowed: equal")
        if dk != d or bk != b:
            raise ConfigError(f"{where}: k {list(shapes[1])} for q {list(shapes[0])}; allowed: the same batch and "
                              "head_dim")
        if hk < 1 or h % hk:
            raise ConfigError(f"{where}: {h} query heads, {hk} K/V heads; allowed: a multiple (GQA)")
        scale_f = 1.0 / math.sqrt(d) if scale is None else float(scale)
        if not math.isfinite(scale_f) or scale_f <= 0:
            raise ConfigError(f"{where}: scale={scale!r}; allowed: a positive finite number")
        meta = self._layers.get(index)
        if meta is None:
            meta = CapturedLayer(index=index, name=name, heads=h, heads_kv=hk, head_dim=d, scale=scale_f,
                                 causal=bool(is_causal),
                                 rows=self.layout_start + sample_rows(n - self.extra_tokens, self.rows,
                                                                      np.random.default_rng([self.seed, index])))
            self._layers[index] = meta
        else:
            now = (name, h, hk, d, bool(is_causal))
            before = (meta.name, meta.heads, meta.heads_kv, meta.head_dim, meta.causal)
            if now != before or not math.isclose(scale_f, meta.scale, rel_tol=1e-6):
                raise ConfigError(f"{where}: name, heads, heads_kv, head_dim, causal {now}, scale {scale_f:.6g}; "
                                  f"before: {before}, scale {meta.scale:.6g}: a layer must not change")
        self._pass_batch = max(self._pass_batch, b)
        fold = np.float32(scale_f * math.sqrt(d))
        picked = None
        for i in range(b):
            item = self._pass_item0 + i
            if self.keep_items is not None and item not in self.keep_items:
                continue
            if picked is None:
                import torch

                picked = torch.as_tensor(meta.rows, device=q.device)
            if self.sink is not None:
                self.sink(meta, self._pass_step, item, q[i].detach().index_select(1, picked), k[i].detach(),
                          v[i].detach())
                continue
            qi = q[i].detach().index_select(1, picked).float().cpu().numpy() * fold
            ki, vi = (x[i].detach().float().cpu().numpy() for x in (k, v))
            self._calls[(index, self._pass_step, item)] = CapturedCall(layer=index, step=self._pass_step, item=item,
                                                                       q=qi, k=ki, v=vi)

    # --------------------------------------------------------------------------------------- results
    @property
    def layers(self) -> tuple[CapturedLayer, ...]:
        """The captured layers, by index."""
        return tuple(self._layers[i] for i in sorted(self._layers))

    @property
    def calls(self) -> tuple[CapturedCall, ...]:
        """Every kept call, by layer, step and batch item."""
        return tuple(self._calls[key] for key in sorted(self._calls))

    @property
    def steps(self) -> tuple[int, ...]:
        """The steps of the kept calls."""
        return tuple(sorted({s for _, s, _ in self._calls}))

    def batch_items(self, step: int) -> tuple[int, ...]:
        """The batch items kept at ``step``."""
        return tuple(sorted({b for _, s, b in self._calls if s == step}))

    def samples(self, *, step: int | None = None, batch_item: int | None = None) -> Samples:
        """The :class:`~sparsesim.search.samples.Samples` of one step and batch item (default: the only one
        kept), every layer; q rows carry the call's scale (see :class:`CapturedCall`)."""
        if self._in_pass:
            self.end_pass()
        if not self._calls:
            raise ConfigError("no attention call was captured: the model did not call "
                              "torch.nn.functional.scaled_dot_product_attention (or steps=/batch_items= kept none); "
                              "an attention function that does not call it can hand its tensors to record()")
        step = self._choose(step, self.steps, "step", "steps")
        batch_item = self._choose(batch_item, self.batch_items(step), "batch_item", f"batch items at step {step}")
        layers = []
        for meta in self.layers:
            call = self._calls.get((meta.index, step, batch_item))
            if call is None:
                raise ConfigError(f"layer {meta.index} {meta.name!r} has no call at step {step}, batch item "
                                  f"{batch_item}")
            layers.append(LayerSamples(name=meta.name, q=call.q, rows=meta.rows, k=call.k, v=call.v))
        return Samples(layout=self.layout, layers=tuple(layers), extra_tokens=self.extra_tokens,
                       extra_at=self.extra_at)

    @staticmethod
    def _choose(value: int | None, kept: tuple[int, ...], arg: str, what: str) -> int:
        if value is None:
            if len(kept) != 1:
                raise ConfigError(f"{len(kept)} {what} were kept ({', '.join(map(str, kept[:8]))}"
                                  f"{', ...' if len(kept) > 8 else ''}); choose one with {arg}=")
            return kept[0]
        if value not in kept:
            raise ConfigError(f"{arg}={value}; kept {what}: {', '.join(map(str, kept[:8]))}")
        return value


def _bind(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """SDPA's arguments by name (defaults filled)."""
    if len(args) > len(_SDPA_ARGS):
        raise ConfigError(f"scaled_dot_product_attention called with {len(args)} positional arguments; allowed: at "
                          f"most {len(_SDPA_ARGS)}")
    out: dict[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                           "enable_gqa": False}
    out.update(zip(_SDPA_ARGS, args, strict=False))
    out.update(kwargs)
    return out


def mask_is_causal(mask: Any, n_q: int, n_k: int) -> bool:
    """Whether an SDPA ``attn_mask`` hides nothing (False) or exactly the future keys (True); any other mask
    (padding, bias, a sparse pattern) is refused in one line."""
    import torch

    m = mask.detach()
    visible = m if m.dtype == torch.bool else m == 0
    if m.dtype != torch.bool and not bool((visible | (m <= _BLOCKED)).all()):
        raise ConfigError("attn_mask adds a bias to the scores; allowed: no mask, or a causal mask (0 / -inf)")
    if bool(visible.all()):
        return False
    causal = torch.ones(n_q, n_k, dtype=torch.bool, device=m.device).tril(n_k - n_q)
    if visible.shape[-2:] == causal.shape and bool((visible == causal).all()):
        return True
    raise ConfigError(f"attn_mask of shape {list(m.shape)} hides keys other than the future ones (padding or a "
                      "pattern); allowed: no mask, or a causal mask")


@contextmanager
def capture_attention(model: Any = None, *, layout: Sequence[int], rows: int = 64, seed: int = 0,
                      steps: Collection[int] | None = None, batch_items: Collection[int] | None = None,
                      extra_tokens: int = 0, extra_at: str = "end") -> Iterator[AttentionCapture]:
    """Record every ``torch.nn.functional.scaled_dot_product_attention`` call while active (module docstring).

    ``model`` (a ``torch.nn.Module``, optional): each of its calls begins a forward pass and layers are named by
    the innermost module that called attention; without it, call :meth:`AttentionCapture.begin_pass` before each
    pass (all calls are one pass otherwise). ``layout``: the token layout (tokens = its product). ``extra_tokens``:
    tokens outside it that every call carries (joint text tokens, sinks), after it (``extra_at="end"``) or before
    it (``"start"``). ``rows``: query rows kept per layer, among the layout's tokens (seeded by ``seed``).
    ``steps`` / ``batch_items``: which to keep (default all).
    ``nn.MultiheadAttention`` runs its Python path while active (its fast path is switched off) and must be
    called with ``need_weights=False``, else it is refused. Attention runs unchanged; the original function is
    restored on exit, also after an error. Nesting, or running it inside ``apply_plan``, is refused.

    Example:
        >>> with capture_attention(model, layout=(2, 4, 4), rows=32) as cap:  # doctest: +SKIP
        ...     for t in range(4):
        ...         cap.step = t
        ...         model(x)
        >>> samples = cap.samples(step=0)  # doctest: +SKIP
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    cap = AttentionCapture(layout=layout, rows=rows, seed=seed, steps=steps, batch_items=batch_items,
                           extra_tokens=extra_tokens, extra_at=extra_at)
    original = F.scaled_dot_product_attention
    busy = getattr(original, PATCH_MARK, None)
    if busy:
        raise ConfigError(f"capture_attention inside {busy}: one replacement of scaled_dot_product_attention at a "
                          "time")

    def sdpa(*args: Any, **kwargs: Any) -> Any:
        a = _bind(args, kwargs)
        q, k = a["query"], a["key"]
        causal = bool(a["is_causal"])
        if a["attn_mask"] is not None:
            causal = mask_is_causal(a["attn_mask"], int(q.shape[-2]), int(k.shape[-2])) or causal
        cap.record(q, k, a["value"], scale=a["scale"], is_causal=causal, enable_gqa=bool(a["enable_gqa"]))
        return original(*args, **kwargs)

    setattr(sdpa, PATCH_MARK, "capture_attention")
    handles: list[Any] = []
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model is a {type(model).__name__}; allowed: a torch.nn.Module or None")
        handles.append(model.register_forward_pre_hook(lambda _m, _a: cap.begin_pass(cap.step)))
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.MultiheadAttention):
                handles.append(mod.register_forward_pre_hook(_need_no_weights(name or "model"), with_kwargs=True))
            if name:
                handles.append(mod.register_forward_pre_hook(_push(cap.module_stack, name)))
                handles.append(mod.register_forward_hook(_pop(cap.module_stack), always_call=True))
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    F.scaled_dot_product_attention = sdpa
    failed = False
    try:
        yield cap
    except BaseException:
        failed = True
        raise
    finally:
        F.scaled_dot_product_attention = original
        torch.backends.mha.set_fastpath_enabled(fast)
        for handle in handles:
            handle.remove()
        if not failed:
            cap.end_pass()


def _push(stack: list[str], name: str) -> Any:
    def hook(_mod: Any, _args: Any) -> None:
        stack.append(name)
    return hook


def _pop(stack: list[str]) -> Any:
    def hook(_mod: Any, _args: Any, _out: Any) -> None:  # returns None: the module's output is kept
        if stack:
            stack.pop()
    return hook


def _need_no_weights(name: str) -> Any:
    def hook(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        need = kwargs.get("need_weights", args[4] if len(args) > 4 else True)
        if need:
            raise ConfigError(f"nn.MultiheadAttention {name!r} is called with need_weights=True, which computes "
                              "attention without scaled_dot_product_attention; call it with need_weights=False "
                              "(the same output) to capture it")
    return hook
