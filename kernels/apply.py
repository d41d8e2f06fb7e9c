"""Run a user's model with a plan: every attention call as the plan says.

:func:`apply_plan` is a context manager: while it is active, each ``torch.nn.functional.
scaled_dot_product_attention`` (SDPA) call of a forward pass of ``model`` is routed as the plan says. The i-th call
of a pass is plan layer i (its ``layer`` field); calls of layers the plan does not list run the original SDPA,
unchanged. A plan with step ranges (:attr:`~sparsesim.simulator.plan.Plan.steps`, e.g. dense warm-up steps) runs
each pass with the plan of its denoising step (:attr:`PlanRunner.step`: by default the passes before it divided by
``passes_per_step``, or the step the caller sets); a pass in a dense range runs every call through the original
SDPA. In a planned layer, the heads of each sparse launch run through
:func:`~sparsesim.kernels.gna_attention` with the plan's pattern and tiles, dense launches through the original
SDPA (cuDNN or flash on a GPU, as torch dispatches). SDPA's ``[batch, heads, tokens, head_dim]`` is viewed as the
kernels' ``[batch, *layout, heads, head_dim]`` and back. Where the kernels cannot run (CPU tensors without
``TRITON_INTERPRET=1``, bfloat16 under the interpreter, or ``backend="reference"``), sparse heads run the torch
reference with the simulator's mask (:func:`~sparsesim.kernels.reference.reference_attention`), so a plan's effect
on the model's output can be measured anywhere.

Refused in one line: a call whose tokens, heads or head_dim are not the plan's, a mask (``attn_mask``; causal
calls must match the plan's causal axes), dropout, and a pass with fewer calls than the plan's last layer. The
original function is restored on exit, also after an error; running inside ``capture_attention`` (or another
``apply_plan``) is refused. Only the module attribute is replaced: code that imported the function by name,
compiled graphs and other threads are not routed.

Example:
    >>> plan = load_plan("minilm.plan.json")  # doctest: +SKIP
    >>> with apply_plan(model, plan):  # doctest: +SKIP
    ...     emb = model(batch)
    >>> with apply_plan(denoiser, step_plan, passes_per_step=2) as run:  # doctest: +SKIP
    ...     for t in range(steps):  # CFG: two passes per step; run.step is t
    ...         v = denoiser(x, t, cond) * g + denoiser(x, t, uncond) * (1 - g)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sparsesim.kernels._launch import interpret
from sparsesim.kernels.plan_run import _kv_heads, _take
from sparsesim.simulator.errors import ConfigError

if TYPE_CHECKING:  # the type only: kernels do not import search at run time
    from sparsesim.simulator.plan import Plan, PlanLaunch, PlanLayer

#: The attribute our SDPA replacements carry (the same name as :mod:`sparsesim.search.capture`'s): one at a time.
PATCH_MARK = "__sparsesim_patch__"
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
BACKENDS = ("auto", "kernels", "reference")


class PlanRunner:
    """Routes attention calls as a plan says (made by :func:`apply_plan`); counts what it ran."""

    def __init__(self, plan: Plan, original: Any, backend: str, passes_per_step: int = 1) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend!r}; allowed: {', '.join(BACKENDS)}")
        if isinstance(passes_per_step, bool) or not isinstance(passes_per_step, int) or passes_per_step < 1:
            raise ConfigError(f"passes_per_step={passes_per_step!r}; allowed: an integer >= 1 (forward passes of the "
                              "model per denoising step, e.g. 2 with classifier-free guidance run as two passes)")
        self.plan = plan
        self.original = original
        self.backend = backend
        self.passes_per_step = passes_per_step
        self.tokens = plan.seq_tokens  # the layout's tokens and the extra ones (text, sinks)
        self._by_range: dict[int, dict[int, PlanLayer]] = {}
        self._entries: dict[int, PlanLayer] = {}
        self._masks: dict[tuple[Any, ...], Any] = {}
        self._call = 0
        self._in_pass = False
        self._step: int | None = None  # set by the caller; None: counted from the passes
        self._pass_step = 0
        #: Forward passes begun, planned calls run (by our kernels or the reference) and calls passed through.
        self.passes = 0
        self.planned_calls = 0
        self.dense_calls = 0
        #: Forward passes that ran in a dense step range (every call passed through).
        self.dense_passes = 0
        #: What ran the sparse heads of the last planned call: "kernels" or "reference".
        self.last_backend = ""

    @property
    def step(self) -> int:
        """The denoising step of the forward passes: by default counted, the passes begun before a pass divided by
        ``passes_per_step`` (read: the step of the pass running or last run, or of the first before any); once set
        (``runner.step = i``, e.g. by a sampling loop before each step), the value set, for every pass until set
        again."""
        if self._step is not None:
            return self._step
        return self._pass_step if self.passes else 0

    @step.setter
    def step(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"runner.step = {value!r}; allowed: a denoising step index >= 0")
        self._step = value
        if self._in_pass and not self._call:  # set before the pass's first attention call: it applies now
            self._start(value)

    def _start(self, step: int) -> None:
        """The planned layers of ``step``'s range (cached per range)."""
        self._pass_step = step
        entry = self.plan.range_at(step)
        key = -1 if entry is None else entry.start
        layers = self._by_range.get(key)
        if layers is None:
            layers = self._by_range[key] = {la.layer: la for la in self.plan.layers_at(step)}
        self._entries = layers

    def begin_pass(self) -> None:
        """Start a forward pass: the next attention call is layer 0, in the plan of :attr:`step`."""
        self.end_pass()
        step = self._step if self._step is not None else self.passes // self.passes_per_step
        self._in_pass = True
        self._call = 0
        self.passes += 1
        self._start(step)
        if not self._entries:
            self.dense_passes += 1

    def end_pass(self) -> None:
        """Finish the current pass: it must have reached every planned layer."""
        if not self._in_pass:
            return
        self._in_pass = False
        if not self._entries:
            return
        last = max(self._entries)
        if self._call and self._call <= last:
            raise ConfigError(f"the forward pass (step {self._pass_step}) made {self._call} attention calls; the "
                              f"plan has layer {last}: "
                              "allowed: a plan whose layers the model's calls reach")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) > len(_SDPA_ARGS):
            return self.original(*args, **kwargs)  # not a call we understand: SDPA says why
        a: dict[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None,
                             "enable_gqa": False}
        a.update(zip(_SDPA_ARGS, args, strict=False))
        a.update(kwargs)
        if not self._in_pass:
            self.begin_pass()
        index = self._call
        self._call += 1
        entry = self._entries.get(index)
        if entry is None:
            self.dense_calls += 1
            return self.original(*args, **kwargs)
        q, k, v = a["query"], a["key"], a["value"]
        self._check(index, q, k, v, a)
        self.planned_calls += 1
        return self.run_layer(entry, q, k, v, a["scale"], bool(a["is_causal"]))

    def _check(self, index: int, q: Any, k: Any, v: Any, a: dict[str, Any]) -> None:
        p = self.plan
        where = f"attention call {index} (plan layer {index})"
        shapes = [list(getattr(x, "shape", ())) for x in (q, k, v)]
        want = f"[batch, {p.heads}, {self.tokens}, {p.head_dim}]"
        if len(shapes[0]) != 4 or shapes[0][1:] != [p.heads, self.tokens, p.head_dim]:
            raise ConfigError(f"{where}: q {shapes[0]}; the plan is for layout {'x'.join(map(str, p.layout))}, "
                              f"{p.heads} heads, head_dim {p.head_dim}: q {want}")
        if len(shapes[1]) != 4 or shapes[1][0] != shapes[0][0] or shapes[1][2:] != [self.tokens, p.head_dim] \
                or p.heads % max(1, shapes[1][1]) or shapes[2] != shapes[1]:
            raise ConfigError(f"{where}: k {shapes[1]}, v {shapes[2]} for q {shapes[0]}; allowed: k and v "
                              f"[batch, heads_kv, {self.tokens}, {p.head_dim}] with heads_kv dividing {p.heads}")
        if a["attn_mask"] is not None:
            raise ConfigError(f"{where}: attn_mask given; apply_plan runs calls without a mask (is_causal=True for "
                              "a causal plan)")
        if a["dropout_p"]:
            raise ConfigError(f"{where}: dropout_p={a['dropout_p']}; apply_plan runs inference (dropout_p=0)")
        causal = bool(a["is_causal"])
        if causal != any(p.causal) or (causal and len(p.layout) != 1):
            raise ConfigError(f"{where}: is_causal={causal}; the plan's causal axes are {list(p.causal)} (is_causal "
                              "matches a 1D causal plan only)")

    def _sparse_backend(self, q: Any) -> str:
        if self.backend != "auto":
            return self.backend
        if q.device.type == "cuda":
            return "kernels"
        # bf16 under the interpreter: numpy has no bfloat16 and the kernels refuse it there
        return "kernels" if interpret() and str(q.dtype) != "torch.bfloat16" else "reference"

    def run_layer(self, entry: PlanLayer, q: Any, k: Any, v: Any, scale: float | None, causal: bool) -> Any:
        """One planned call: ``q`` ``[B, H, N, D]``, ``k``/``v`` ``[B, H_kv, N, D]`` -> ``[B, H, N, D]``."""
        import torch

        b, h, n, d = (int(x) for x in q.shape)
        hk = int(k.shape[1])
        group = h // hk
        if all(la.dense for la in entry.launches):
            return self.original(q, k, v, is_causal=causal, scale=scale, enable_gqa=hk < h)
        layout = self.plan.layout
        out = q.new_empty(q.shape)
        # NATTEN-layout views of SDPA's [B, H, N, D] tensors (no copy: the kernels take strides); with extra
        # tokens the kernels take the flat sequence [B, N + E, H, D] and the layout by name
        flat = self.plan.extra_tokens > 0
        qn, kn, vn, outn = (x.transpose(1, 2) if flat else x.transpose(1, 2).unflatten(1, layout)
                            for x in (q, k, v, out))
        for launch in entry.launches:
            heads = list(launch.heads)
            kv, whole = _kv_heads(heads, group)
            if not launch.dense and whole and self._sparse_backend(q) == "kernels":
                self._sparse(launch, qn, kn, vn, scale, out=outn, heads=heads)  # in place, through a head map
                continue
            idx = torch.as_tensor(heads, device=q.device)
            if launch.dense:
                kv_idx = torch.as_tensor([i // group for i in heads], device=q.device)
                o = self.original(q.index_select(1, idx), k.index_select(1, kv_idx), v.index_select(1, kv_idx),
                                  is_causal=causal, scale=scale)
            else:
                on = self._sparse(launch, _take(qn, heads), _take(kn, kv), _take(vn, kv), scale)
                o = on.reshape(b, n, len(heads), d).transpose(1, 2)
            out.index_copy_(1, idx, o.to(out.dtype))
        return out

    def extras(self) -> dict[str, Any]:
        """The kernels' extra-token arguments of the plan (none without extra tokens)."""
        p = self.plan
        if not p.extra_tokens:
            return {}
        return {"extra_tokens": p.extra_tokens, "extra_at": p.extra_at, "input_size": list(p.layout)}

    def _sparse(self, launch: PlanLaunch, q: Any, k: Any, v: Any, scale: float | None, out: Any = None,
                heads: Any = None) -> Any:
        """One sparse launch on ``[B, *layout, h, D]`` tensors (``heads``/``out``: the kernels run those heads of
        the layer's tensors in place, writing them into ``out``)."""
        p = self.plan
        backend = self._sparse_backend(q)
        self.last_backend = backend
        if backend == "kernels":
            from sparsesim.kernels.gna import gna_attention

            try:
                return gna_attention(q, k, v, window=list(launch.window), stride=list(launch.stride),
                                     dilation=list(launch.dilation), causal=list(p.causal), q_tile=list(p.q_tile),
                                     kv_tile=list(p.kv_tile), scale=scale, out=out, heads=heads,
                                     **self.extras())
            except ValueError as exc:
                raise ConfigError(f"apply_plan: {' '.join(str(exc).split())}") from None
        import torch

        from sparsesim.kernels.reference import reference_attention
        from sparsesim.simulator.patterns import visible_mask

        key = (launch.window, launch.stride, launch.dilation, q.device)
        mask = self._masks.get(key)
        if mask is None:
            mask = torch.as_tensor(visible_mask(p.pattern(launch)), device=q.device)
            self._masks[key] = mask
        dtype = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
        return reference_attention(q, k, v, mask, scale=scale, dtype=dtype).to(q.dtype)


@contextmanager
def apply_plan(model: Any, plan: Plan, *, backend: str = "auto", passes_per_step: int = 1) -> Iterator[PlanRunner]:
    """Route ``model``'s attention calls through the plan while active (see the module docstring).

    ``model``: a ``torch.nn.Module``, each of whose calls is one forward pass (or None: call
    :meth:`PlanRunner.begin_pass` before each pass). ``plan``: a :class:`~sparsesim.simulator.plan.Plan` whose
    layout, heads and head_dim are the calls'. ``backend``: ``"auto"`` (our kernels on a GPU or under
    ``TRITON_INTERPRET=1``, the torch reference otherwise), ``"kernels"`` or ``"reference"``.
    ``passes_per_step``: forward passes per denoising step (e.g. 2 for classifier-free guidance run as two
    passes), for a plan with step ranges (:attr:`~sparsesim.simulator.plan.Plan.steps`); or set
    ``runner.step = i`` before each step (:attr:`PlanRunner.step`).
    ``nn.MultiheadAttention`` must be called with ``need_weights=False`` (its fast path is switched off while
    active).
    """
    import torch
    import torch.nn.functional as F  # noqa: N812

    original = F.scaled_dot_product_attention
    busy = getattr(original, PATCH_MARK, None)
    if busy:
        raise ConfigError(f"apply_plan inside {busy}: one replacement of scaled_dot_product_attention at a time")
    runner = PlanRunner(plan, original, backend, passes_per_step)
    handles = []
    if model is not None:
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"model is a {type(model).__name__}; allowed: a torch.nn.Module or None")
        handles.append(model.register_forward_pre_hook(lambda _m, _a: runner.begin_pass()))

    def sdpa(*args: Any, **kwargs: Any) -> Any:
        return runner(*args, **kwargs)

    setattr(sdpa, PATCH_MARK, "apply_plan")
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    F.scaled_dot_product_attention = sdpa
    failed = False
    try:
        yield runner
    except BaseException:
        failed = True
        raise
    finally:
        F.scaled_dot_product_attention = original
        torch.backends.mha.set_fastpath_enabled(fast)
        for handle in handles:
            handle.remove()
        if not failed:
            runner.end_pass()
