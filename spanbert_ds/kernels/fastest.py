"""Choose the fastest of interchangeable implementations by timing each once on the real inputs.

The `auto` backends use this on CUDA: whether our Triton kernel beats PyTorch's own (SDPA's flash kernel,
eager bias + GeLU + LayerNorm) depends on the GPU, the dtype and the shape, so it is measured, not
guessed. A choice costs a few forward + backward passes of each candidate, once per key per process
(the key holds the shape class: dtype, head dim, sequence-length bucket, ...), and is cached.

The trials run inside `torch.random.fork_rng`, so the dropout streams of training are the same as if no
trial had run: a resumed run, which times again in its first step, replays the batches bit for bit.
Different processes may choose differently when two candidates are within noise of each other; pick a
backend by name (`fused`, `sdpa`) where bitwise-identical ranks matter more than speed.
"""

import logging
import statistics
import time

import torch

log = logging.getLogger(__name__)

_CHOICES = {}  # key -> (name, {name: milliseconds})


def choices():
    """Every choice made so far in this process: {key: (name, {candidate: median ms})}."""
    return dict(_CHOICES)


def _clock(device):
    """() -> (start, stop) closures that time the work queued on `device` in milliseconds."""
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

    make_candidates() -> {name: run}, called only when `key` has no choice yet; each run() doing one full unit of work (forward and, in training, backward)
    on its own copy of the inputs. Each is run once untimed (compilation, autotuning), then `reps` times
    in turns; the median decides. A candidate that raises is dropped with a warning (a kernel that does
    not compile for this shape); if all raise, the first candidate's error is raised.
    """
    if key in _CHOICES:
        return _CHOICES[key][0]
    candidates = make_candidates()
    device = torch.device(device)
    start, stop = _clock(device)
    fork = [device] if device.type == "cuda" else []
    times = {name: [] for name in candidates}
    errors = {}
    with torch.random.fork_rng(devices=fork):
        for name, run in candidates.items():
            try:
                run()
            except Exception as error:  # noqa: BLE001 - one failing candidate must not stop training
                errors[name] = error
                log.warning("auto: %s cannot run at %s (%s: %s); not using it there",
                            name, key, type(error).__name__, error)
        live = [name for name in candidates if name not in errors]
        if not live:
            raise next(iter(errors.values()))
        for _ in range(reps):
            for name in live:
                begin = start()
                candidates[name]()
                times[name].append(stop(begin))
    medians = {name: statistics.median(times[name]) for name in live}
    best = min(live, key=medians.get)
    _CHOICES[key] = (best, medians)
    log.info("auto: %s for %s (%s)", best, key, ", ".join(f"{n} {ms:.3f} ms" for n, ms in medians.items()))
    return best


def trial(fn, inputs, *args):
    """A run() for `fastest`: fn(*inputs, *args) on detached copies of the input tensors, followed by its
    backward when autograd would run one (grad mode on and some input requiring grad)."""
    leaves = [t.detach().requires_grad_(t.requires_grad) for t in inputs]
    wanted = [t for t in leaves if t.requires_grad] if torch.is_grad_enabled() else []

    def run():
        out = fn(*leaves, *args)
        if wanted:
            torch.autograd.grad(out, wanted, torch.ones_like(out))
    return run


def size_class(n):
    """n rounded up to a power of two: shapes in one class share a choice."""
    return 1 << max(0, int(n) - 1).bit_length()
