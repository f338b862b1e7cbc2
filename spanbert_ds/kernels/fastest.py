"""Choose the fastest of interchangeable implementations by timing each once on the real inputs.

The `auto` backends use this on CUDA: whether our Triton kernel beats PyTorch's own (SDPA's flash kernel,
eager bias + GeLU + LayerNorm) depends on the GPU, the dtype and the shape, so it is measured, not
guessed. A choice costs a few forward + backward passes of each candidate, once per key per process
(the key holds the shape class: dtype, head dim, sequence-length bucket, ...), and is cached.

Keys never hold the grad mode and trials always time forward + backward: activation checkpointing runs
a layer's forward without grad and recomputes it with grad, and both passes must take the same backend,
or the recompute would draw other dropout masks than the forward the loss saw.

The trials run inside `torch.random.fork_rng`, so the random streams of training continue as if no
trial had run. The choice itself is made by timing, so two processes (ranks, or a run and its
resumption) may choose differently when the candidates are within noise of each other; pick a backend
by name (`fused`, `sdpa`) where bitwise-identical numbers matter more than speed.
"""

import logging
import statistics
import time

import torch

from spanbert_ds.errors import UserError

log = logging.getLogger(__name__)

_CHOICES = {}  # key -> (name, {name: milliseconds})


def choices():
    """Every choice made so far in this process: {key: (name, {candidate: median ms})}."""
    return dict(_CHOICES)


def _clock(device):
    """(start, stop): start() marks now, stop(mark) gives the milliseconds of work queued on `device` since."""
    if device.type == "cuda":
        def start():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event

        def stop(begin):
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            end.synchronize()
            return begin.elapsed_time(end)
        return start, stop
    return time.perf_counter, lambda begin: (time.perf_counter() - begin) * 1e3


def fastest(key, make_candidates, device, reps=5):
    """Name of the candidate that ran fastest, timed once per key.

    make_candidates() -> {name: run}, called only when `key` has no choice yet; each run() does one
    forward + backward on its own copy of the inputs (see `trial`). Each is run once untimed
    (compilation, autotuning), then `reps` times in turns; the median decides. A candidate that raises
    is dropped (a kernel that does not take this shape); if all raise, the last one's error is raised,
    so list PyTorch's own implementation last: its error is the one a user can act on. While torch.compile
    traces or a CUDA graph is captured nothing can be timed: the last candidate is used, uncached.
    """
    if key in _CHOICES:
        return _CHOICES[key][0]
    candidates = make_candidates()
    device = torch.device(device)
    if torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return list(candidates)[-1]  # nothing can be timed while compiling or capturing a CUDA graph
    start, stop = _clock(device)
    times = {name: [] for name in candidates}
    errors = {}

    def attempt(name, timed):
        try:
            begin = start() if timed else None
            candidates[name]()
            if timed:
                times[name].append(stop(begin))
        except Exception as error:  # noqa: BLE001 - one candidate failing must not stop training
            errors[name] = error
            level = logging.INFO if isinstance(error, UserError) else logging.WARNING  # UserError: not supported
            log.log(level, "auto: %s cannot run at %s (%s: %s); not using it there", name, key,
                    type(error).__name__, error)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for name in candidates:
            attempt(name, timed=False)
        for _ in range(reps):
            for name in candidates:
                if name not in errors:
                    attempt(name, timed=True)
    medians = {name: statistics.median(times[name]) for name in candidates if name not in errors}
    if not medians:
        raise errors[list(candidates)[-1]]
    best = min(medians, key=medians.get)
    _CHOICES[key] = (best, medians)
    log.info("auto: %s for %s (%s)", best, key, ", ".join(f"{n} {ms:.3f} ms" for n, ms in medians.items()))
    return best


def trial(fn, inputs, *args):
    """A run() for `fastest`: fn(*inputs, *args) and its backward, on detached copies of the input tensors
    that all require grad, whatever the caller's grad mode (see the module's docstring)."""
    leaves = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
    wanted = [t for t in leaves if t.requires_grad]

    def run():
        with torch.enable_grad():
            out = fn(*leaves, *args)
            torch.autograd.grad(out, wanted, torch.ones_like(out))
    return run


def size_class(n):
    """n rounded up to a power of two: shapes in one class share a choice."""
    return 1 << max(0, int(n) - 1).bit_length()
