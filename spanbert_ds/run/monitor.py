"""Everything a person watches during pretraining, written by rank 0 only:
TensorBoard scalars, metrics.jsonl (one JSON object per logged step), the monitors of the ds_config's
own blocks (DeepSpeed's `tensorboard`, `wandb`, `csv_monitor`, `comet`: every scalar, under the same names
as our TensorBoard) and, on a terminal, a progress bar; where stderr is a file (a SLURM .out), one plain
line per logged step instead.

Every scalar is logged against the optimizer step. The losses and held-out scores are also logged against
the tokens consumed so far (real tokens, padding left out), under `by_tokens/`: runs of different batch
sizes or sequence lengths compare on that axis. The count is kept in each checkpoint, so a resumed run
continues it."""

import contextlib
import json
import os
import sys
import time

import torch
from tqdm import tqdm

# Dense bf16/fp16 tensor-core peak of the GPUs we know, for model FLOPs utilisation, most specific
# name first (an "L40S" must not match "L4"). Unknown devices get no MFU rather than a wrong one.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("A100", 312e12), ("A10G", 70e12), ("A10", 125e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12), ("V100", 125e12),
)


def device_peak_flops():
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)


def peak_rss_gb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Monitor:
    def __init__(self, run_dir, enabled, first_step, total_steps, flops_per_token, flops_per_decoded_row,
                 desc="pretraining", ds_monitor=None, tokens_seen=0):
        self.enabled = enabled
        self.tokens_seen = tokens_seen  # real tokens of every step so far, resumed runs included
        self.ds_monitor = ds_monitor if ds_monitor is not None and ds_monitor.enabled else None
        self.desc, self.total_steps = desc, total_steps
        self.flops_per_token, self.flops_per_decoded_row = flops_per_token, flops_per_decoded_row
        self.peak = device_peak_flops()
        self.last_time, self.last_step = time.perf_counter(), first_step
        self.tokens = self.samples = self.decoded = 0
        self.held_out = {}  # the last evaluation's scores, kept in the progress bar until the next one
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run redoes the steps after its checkpoint: what the interrupted run logged for them goes,
        # so each step appears once (TensorBoard's purge_step does the same for the event files).
        self.writer = SummaryWriter(os.path.join(run_dir, "tensorboard"),
                                    purge_step=first_step + 1 if first_step else None)
        path = os.path.join(run_dir, "metrics.jsonl")
        if first_step:
            _drop_rows_after(path, first_step)
        self.jsonl = open(path, "a", buffering=1)
        # A progress bar redrawn with \r is unreadable in a file: there, one plain line per logged step.
        self.bar = tqdm(total=total_steps, initial=first_step, desc=desc, unit="step", dynamic_ncols=True,
                        disable=not sys.stderr.isatty())

    def count(self, tokens, samples, decoded_rows):
        """Add one global step's real (non-padding) tokens, samples and rows through the vocabulary decoders."""
        self.tokens += tokens
        self.tokens_seen += tokens
        self.samples += samples
        self.decoded += decoded_rows

    def log(self, step, scalars):
        """Write `scalars` (the objective's parts, lr, grad norm, ...) plus throughput and memory for `step`."""
        now = time.perf_counter()
        seconds, steps = now - self.last_time, step - self.last_step
        metrics = dict(scalars)
        if steps > 0 and seconds > 0:
            metrics["tokens_per_s"] = self.tokens / seconds
            metrics["samples_per_s"] = self.samples / seconds
            metrics["steps_per_s"] = steps / seconds
            if self.peak:
                world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
                flops = self.tokens * self.flops_per_token + self.decoded * self.flops_per_decoded_row
                metrics["mfu"] = flops / seconds / (self.peak * world)
        metrics["rss_peak_gb"] = peak_rss_gb()
        if torch.cuda.is_available():
            metrics["gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        metrics["tokens_seen"] = float(self.tokens_seen)
        self.last_time, self.last_step, self.tokens, self.samples, self.decoded = now, step, 0, 0, 0
        if not self.enabled:
            return metrics
        events = [(_tag(name), value, step) for name, value in metrics.items()]
        events += [(f"by_tokens/{name}", value, int(self.tokens_seen)) for name, value in metrics.items()
                   if name.endswith(("loss", "accuracy"))]
        for tag, value, x in events:
            self.writer.add_scalar(tag, value, x)
        if self.ds_monitor is not None:
            self.ds_monitor.write_events(events)
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        if "eval_loss" in metrics:
            self.held_out = {"eval_loss": metrics["eval_loss"], "eval_mlm_acc": metrics.get("eval_mlm_accuracy")}
            self.bar.write(_held_out_line(step, metrics), file=sys.stderr)
        shown = {k: v for k, v in metrics.items() if k.endswith("loss") and not k.startswith("eval_")}
        shown.update({k: metrics[k] for k in ("lr", "tokens_per_s") if k in metrics})
        shown.update({k: v for k, v in self.held_out.items() if v is not None})
        if self.bar.disable:
            values = "  ".join(f"{k} {v:.4g}" for k, v in shown.items())
            print(f"{self.desc} step {step}/{self.total_steps}  {values}", file=sys.stderr, flush=True)
        self.bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=False)
        self.bar.update(step - self.bar.n)
        return metrics

    @contextlib.contextmanager
    def paused(self):
        """Work that is not training (a checkpoint save, an evaluation): left out of the throughput."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.last_time += time.perf_counter() - started

    def message(self, text):
        if self.enabled:
            self.bar.write(text, file=sys.stderr)

    def close(self):
        if self.enabled:
            self.bar.close()
            self.writer.close()
            self.jsonl.close()


class StepSums:
    """One optimizer step's sums on this rank: the objective's parts (over its micro-batches), real tokens,
    samples and rows through the vocabulary decoders. `reduce` all-reduces them together with the stop
    flag: one collective per step, and every rank learns that some rank was asked to stop."""

    def __init__(self, device, parts):
        self.parts = parts
        self.sums = torch.zeros(len(parts) + 4, dtype=torch.float64, device=device)
        self.present = list(parts)

    def add(self, out, batch):
        self.present = [part for part in self.parts if part in out]
        n = len(self.parts)
        zero = self.sums.new_zeros(())
        self.sums[:n] += torch.stack([out[p].detach().double() if p in out else zero for p in self.parts])
        self.sums[n] += batch["attention_mask"].sum()
        self.sums[n + 1] += batch["input_ids"].shape[0]
        self.sums[n + 2] += sum(batch[key].numel() for key in ("mlm_positions", "sbo_labels") if key in batch)

    def reduce(self, stop, micro_batches):
        """({part: mean over the step's `micro_batches` on all ranks}, [tokens, samples, decoded rows],
        whether any rank was asked to stop)."""
        n = len(self.parts)
        self.sums[n + 3] = 1.0 if stop else 0.0
        torch.distributed.all_reduce(self.sums)
        values = self.sums.tolist()
        self.sums.zero_()
        parts = {p: v / micro_batches for p, v in zip(self.parts, values) if p in self.present}
        return parts, values[n:n + 3], values[n + 3] > 0


def optimizer_scalars(engine):
    """Gradient norm, and under fp16 the loss scale and the steps its overflows skipped."""
    scalars = {}
    grad_norm = engine.get_global_grad_norm()
    if grad_norm is not None:
        scalars["grad_norm"] = float(grad_norm)
    if engine.fp16_enabled():
        optimizer = engine.optimizer
        scalars["loss_scale"] = float(getattr(optimizer, "cur_scale", getattr(optimizer, "loss_scale", 0.0)))
        # steps whose update fp16's loss scaling dropped (gradient overflow): they use up data but do not
        # move the weights or the learning-rate schedule
        scalars["skipped_steps"] = float(getattr(engine, "skipped_steps", 0))
    return scalars


def _held_out_line(step, metrics):
    """e.g. `step 500 held out: mlm loss 4.02 accuracy 31.5% (unigram 5.9% / 6.81); sbo ...`"""
    parts = []
    for part in ("mlm", "sbo", "nsp", "rtd"):
        if f"eval_{part}_loss" not in metrics:
            continue
        text = f"{part} loss {metrics[f'eval_{part}_loss']:.3f} accuracy {100 * metrics[f'eval_{part}_accuracy']:.1f}%"
        if f"eval_{part}_unigram_accuracy" in metrics:
            text += (f" (unigram baseline: {100 * metrics[f'eval_{part}_unigram_accuracy']:.1f}%, "
                     f"loss {metrics[f'eval_{part}_unigram_loss']:.3f})")
        parts.append(text)
    return f"step {step} held out: " + "; ".join(parts)


def _tag(name):
    """TensorBoard's name for a metric: eval_mlm_loss -> eval/mlm_loss, mlm_loss -> loss/mlm_loss."""
    if name.startswith("eval_"):
        return f"eval/{name[len('eval_'):]}"
    return f"{_group(name)}/{name}"


def _group(name):
    if name.endswith("loss"):
        return "loss"
    if name.startswith("rtd_") or name == "replaced_fraction":
        return "rtd"
    if name in ("tokens_per_s", "samples_per_s", "steps_per_s", "mfu"):
        return "throughput"
    if "gb" in name:
        return "memory"
    return "optim"


def _drop_rows_after(path, step):
    """Rewrite metrics.jsonl without its rows past `step` (atomically: a crash leaves the old file)."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return
    kept = [line for line in lines if _step_of(line) <= step]  # a line the crash cut short goes too
    if len(kept) == len(lines):
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def _step_of(line):
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")
