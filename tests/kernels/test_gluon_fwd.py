"""The warp-specialized Gluon forward's selection rule on CPU (the kernel itself: tests/gpu/test_gluon_fwd_cuda.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
gluon_fwd = pytest.importorskip("sparsesim.kernels.gluon_fwd")


def test_not_taken_on_cpu_or_under_the_interpreter():
    q = torch.randn(1, 64, 2, 128, dtype=torch.bfloat16)
    assert not gluon_fwd.supported(q, q, q)
    assert not gluon_fwd.use_ws(q, q, q, work=2 ** 40)


def test_cpu_calls_still_run_the_triton_kernels(monkeypatch):
    """With no size floor the dispatch still never picks the Gluon kernel off a Hopper GPU."""
    from sparsesim.kernels import attention, reference_attention

    monkeypatch.setattr(gluon_fwd, "MIN_WORK", 0)
    q, k, v = (torch.randn(1, 40, 2, 32) for _ in range(3))
    out = attention(q, k, v)
    assert float((out.double() - reference_attention(q, k, v)).abs().max()) < 1e-3


def test_repeated_launches_rebuild_what_changes(monkeypatch):
    """A launch's cached arguments (its shapes fix them) never go stale: repeated calls with new tensors point the
    descriptors and pointers at the new tensors, and the LSE switches on and off with its buffer (the launch itself
    stubbed; the kernel's results are tests/gpu's)."""
    from sparsesim.kernels import _launch

    seen: list[tuple] = []
    monkeypatch.setattr(_launch, "launch_compiled",
                        lambda cache, key, kernel, grid, args, constexprs, options: seen.append(
                            (key, grid, args, dict(constexprs))))
    cache: dict = {}
    keys = []
    shape = (2, 300, 4, 64)
    for store_lse in (False, True, False):
        q, k, v, out = (torch.randn(shape, dtype=torch.float16) for _ in range(4))
        lse = torch.empty(2, 4, 300) if store_lse else None
        gluon_fwd.ws_forward(q, k, v, out, lse, 0.125, cache=cache)
        key, grid, args, constexprs = seen[-1]
        keys.append(key)
        assert [d.base.data_ptr() for d in args[:3]] == [x.data_ptr() for x in (q, k, v)]
        assert args[3] is out and (args[4] is lse if store_lse else args[4] is out)
        assert constexprs["STORE_LSE"] is store_lse and key[-len(constexprs):] == tuple(constexprs.values())
        gluon_fwd.ws_forward(q, k, v, out, lse, 0.125, cache={})  # everything computed anew
        _, fgrid, fargs, fconst = seen[-1]
        assert (grid, args[5:], constexprs) == (fgrid, fargs[5:], fconst)
        assert [d.block_shape for d in args[:3]] == [d.block_shape for d in fargs[:3]]
        assert grid == (-(-300 // 128) * 4 * 2, 1, 1)  # a program per work item; the launcher reads 3 dimensions
    assert keys[0] == keys[2] != keys[1]  # the LSE flavour is its own compiled kernel


def test_persistent_launch_has_a_program_per_sm_at_most(monkeypatch):
    """``persistent=True``: one program per SM (at most one per work item), the same compiled kernel."""
    from sparsesim.kernels import _launch

    seen: list[tuple] = []
    monkeypatch.setattr(_launch, "launch_compiled",
                        lambda cache, key, kernel, grid, args, constexprs, options: seen.append((key, grid)))
    monkeypatch.setattr(gluon_fwd, "_sm_count", lambda index: 7)
    for n, items in ((3000, 24 * 2 * 2), (200, 2 * 2 * 2)):
        q, k, v, out = (torch.randn(2, n, 2, 64, dtype=torch.float16) for _ in range(4))
        for persistent in (False, True):
            gluon_fwd.ws_forward(q, k, v, out, None, 0.125, cache={}, persistent=persistent)
        (key1, grid1), (key2, grid2) = seen[-2:]
        assert grid1 == (items, 1, 1) and grid2 == (min(items, 7), 1, 1) and key1 == key2


def test_repeated_launches_keep_descriptors_by_address_and_no_tensor(monkeypatch):
    """Once a launch is compiled, repeated calls get their descriptors by storage address: the same object for the
    same address, a new one pointing at a new address, none holding a tensor (a cached descriptor must not keep a
    caller's memory alive), at most MAX_ADDRESSES per view (the launch stubbed)."""
    import gc
    import weakref

    from sparsesim.kernels import _launch

    seen: list[tuple] = []

    def fake_launch(cache, key, kernel, grid, args, constexprs, options):
        cache.setdefault(key, object())  # as if compiled
        seen.append(args)

    monkeypatch.setattr(_launch, "launch_compiled", fake_launch)
    cache: dict = {}
    shape = (1, 256, 2, 64)
    q, k, v, out = (torch.randn(shape, dtype=torch.float16) for _ in range(4))
    gluon_fwd.ws_forward(q, k, v, out, None, 0.125, cache=cache)  # the first launch: real tensors
    assert seen[-1][0].base.data_ptr() == q.data_ptr()
    gluon_fwd.ws_forward(q, k, v, out, None, 0.125, cache=cache)
    first = seen[-1][:3]
    assert [type(d.base).__name__ for d in first] == ["_Address"] * 3
    assert [d.base.data_ptr() for d in first] == [x.data_ptr() for x in (q, k, v)]
    gluon_fwd.ws_forward(q, k, v, out, None, 0.125, cache=cache)
    assert all(a is b for a, b in zip(seen[-1][:3], first, strict=True))  # found again, not rebuilt
    q2 = torch.randn(shape, dtype=torch.float16)
    gone = weakref.ref(q2)
    gluon_fwd.ws_forward(q2, k, v, out, None, 0.125, cache=cache)
    assert seen[-1][0].base.data_ptr() == q2.data_ptr() and seen[-1][1] is first[1]
    del q2
    seen.clear()
    gc.collect()
    assert gone() is None  # the cache kept no reference to the tensor
    held = [torch.randn(shape, dtype=torch.float16) for _ in range(gluon_fwd.MAX_ADDRESSES + 3)]  # distinct addresses
    for x in held:
        gluon_fwd.ws_forward(x, k, v, out, None, 0.125, cache=cache)
    sizes = [len(val) for key, val in cache.items() if isinstance(key, tuple) and key[:1] in (("desc",), ("descs",))]
    # per view (Q's, and K's shared with V's) and per address triple: each at the bound, none past it
    assert sorted(sizes) == [2, gluon_fwd.MAX_ADDRESSES, gluon_fwd.MAX_ADDRESSES]


def test_direct_launch_only_where_its_launcher_is_known(monkeypatch):
    """``direct_launch`` gives None (callers keep the compiled kernel's own launch) for anything but Triton 3.6's
    descriptor-expanding launcher: another launcher format, an object that is not a compiled kernel, a kernel
    with scratch memory, a wrapper closing over other names; where it is that launcher, the C launcher gets the
    grid, the current stream, the kernel and its metadata, no hooks, then the encoded descriptors and the other
    arguments, and nothing is launched while a hook is set (the real launch: tests/gpu/test_direct_launch_cuda.py).
    """
    from types import SimpleNamespace

    import triton.runtime
    from triton.backends.nvidia import driver as nvidia

    from sparsesim.kernels import _launch

    calls: list[tuple] = []

    def wrap(launcher, tensordesc_meta, tensordesc_indices):  # closes over the names Triton 3.6's wrapper does
        def inner(*args):
            return launcher, tensordesc_meta, tensordesc_indices
        return inner

    def wrap_other(launcher, meta, indices):
        def inner(*args):
            return launcher, meta, indices
        return inner

    def compiled(scratch: int = 0, wrapper=wrap):
        run = SimpleNamespace(global_scratch_size=scratch, profile_scratch_size=0, launch_cooperative_grid=False,
                              launch_pdl=True, launch=wrapper(lambda *a: calls.append(a), [{"m": 0}, {"m": 1}],
                                                              {0, 1}))
        return SimpleNamespace(run=run, function=77, packed_metadata=("packed",))

    monkeypatch.setattr(nvidia, "make_tensordesc_arg", lambda desc, meta: [f"map{desc}{meta['m']}", 8, 1])
    monkeypatch.setattr(triton.runtime.driver, "_active", SimpleNamespace(get_current_device=lambda: 5,
                                                                          get_current_stream=lambda d: 1000 + d))
    monkeypatch.setattr(nvidia, "_BASE_ARGS_FORMAT", "other", raising=False)
    assert _launch.direct_launch(compiled(), 2) is None  # not the launcher format it was written against
    monkeypatch.setattr(nvidia, "_BASE_ARGS_FORMAT", _launch.LAUNCHER_BASE_ARGS, raising=False)
    assert _launch.direct_launch(object(), 2) is None
    assert _launch.direct_launch(compiled(scratch=64), 2) is None
    assert _launch.direct_launch(compiled(wrapper=wrap_other), 2) is None
    assert _launch.direct_launch(compiled(), 3) is None  # the kernel has two descriptors, not three
    direct = _launch.direct_launch(compiled(), 2)
    assert isinstance(direct, _launch.DirectLaunch)
    expanded = direct.expand(["Q", "K"])
    assert expanded == ("mapQ0", 8, 1, "mapK1", 8, 1)
    assert direct((3, 1, 1), expanded, ("out", 42, True))
    assert calls == [(3, 1, 1, 1005, 77, False, True, None, None, ("packed",), None, None, None, *expanded, "out", 42,
                      True)]
    from triton import knobs

    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", SimpleNamespace(calls=[print]))
    assert not direct((3, 1, 1), expanded, ("out", 42, True)) and len(calls) == 1  # a profiler's hook: not here
