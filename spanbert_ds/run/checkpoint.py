"""Checkpoints: DeepSpeed's engine.save_checkpoint plus what makes them safe to resume from.

A checkpoint is CKPT/step<N>/ as DeepSpeed writes it, and counts only once
`complete.json` is in it: rank 0 writes that marker after every rank has
finished writing, so a run killed half-way through a save never resumes from a
half-written checkpoint. The marker lists the folder's files and their sizes: a
checkpoint whose files went missing or changed size since, or whose marker names
another step than its folder, does not count either (resume and export fall back
to the one before, and say so). Resuming on another number of ranks under ZeRO goes
through DeepSpeed's universal checkpoint conversion.
"""

import glob
import json
import os
import pickle
import shutil
import subprocess
import sys

import torch
import torch.distributed as dist

from spanbert_ds.errors import UserError
from spanbert_ds.folders import out_of_space, size_mb
from spanbert_ds.run.distributed import said_by_rank_0

MARKER = "complete.json"
UNIVERSAL_SUFFIX = "_universal"


def tag_of(step):
    return f"step{step}"


def save(engine, root, step, client_state, keep, info):
    """Save on every rank, mark complete on rank 0, then prune to the last `keep` checkpoints."""
    tag = tag_of(step)
    # DeepSpeed needs this key to convert ZeRO 1/2 checkpoints to the universal format later.
    client_state = {**client_state, "universal_checkpoint_info": {}}
    if dist.get_rank() == 0:
        # A folder already there is what a killed save left (a run only saves past its latest checkpoint):
        # clear it, so no shard from another number of ranks stays beside the new ones.
        shutil.rmtree(os.path.join(root, tag), ignore_errors=True)
        shutil.rmtree(os.path.join(root, tag + UNIVERSAL_SUFFIX), ignore_errors=True)
    dist.barrier()
    failure = None
    try:
        engine.save_checkpoint(root, tag=tag, client_state=client_state)
    except (OSError, RuntimeError) as error:
        if not out_of_space(error):
            raise
        failure = error
    failed = torch.tensor([int(failure is not None)], device=engine.device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)  # every rank learns it, so none waits for the others
    if failed.item():
        _give_up_on_full_disk(root, tag)
    if dist.get_rank() == 0:
        files = _files_of(os.path.join(root, tag))
        _write_json_atomic(os.path.join(root, tag, MARKER), {"step": step, **info, "files": files})
        for old in complete_checkpoints(root, warn=None)[:-keep]:
            shutil.rmtree(os.path.join(root, tag_of(old["step"])), ignore_errors=True)
            shutil.rmtree(os.path.join(root, tag_of(old["step"]) + UNIVERSAL_SUFFIX), ignore_errors=True)
    dist.barrier()


def warn_on_rank_0(message):
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"warning: {message}", file=sys.stderr)


def _give_up_on_full_disk(root, tag):
    """After a save that ran out of space on some rank: the partial folder goes, and the run stops with one
    line (rank 0) while the checkpoint before stays the latest."""
    said_by_rank_0(dist.get_rank())
    shutil.rmtree(os.path.join(root, tag), ignore_errors=True)
    found = complete_checkpoints(root, warn=None)
    kept = "no checkpoint is kept yet"
    if found:
        latest = tag_of(found[-1]["step"])
        size = size_mb(os.path.join(root, latest))
        kept = f"{latest} stays the latest (a checkpoint of this run takes {size:.0f} MB)"
    raise UserError(f"no space left on the device of {root} while saving {tag}; the partial {tag} was removed and "
                    f"{kept}: free space, then resume with --resume auto")


def complete_checkpoints(root, warn=warn_on_rank_0):
    """The marker dicts of every complete, undamaged checkpoint under `root`, oldest first; each damaged one
    is skipped with a line to `warn` (None: quietly)."""
    found = []
    for marker in glob.glob(os.path.join(root, "step*", MARKER)):
        tag_dir = os.path.dirname(marker)
        if tag_dir.endswith(UNIVERSAL_SUFFIX):
            continue  # a converted copy of another checkpoint, not a checkpoint of its own
        try:
            with open(marker) as f:
                info = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue  # a marker cut short by a crash: that checkpoint does not count
        why = damage(tag_dir, info)
        if why is None:
            found.append(info)
        elif warn:
            warn(f"checkpoint {tag_dir} is damaged ({why}); it is skipped, so the one before it counts as the "
                 "latest")
    return sorted(found, key=lambda info: info["step"])


def read_marker(tag_dir):
    """The marker of checkpoint folder tag_dir; a UserError if it is missing, damaged or disagrees."""
    try:
        with open(os.path.join(tag_dir, MARKER)) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{tag_dir} is not a complete checkpoint (no {MARKER}): it was cut short or is not "
                        "ours; resume from another one") from None
    except json.JSONDecodeError:
        raise UserError(f"{tag_dir}/{MARKER} is damaged; resume from another checkpoint") from None
    why = damage(tag_dir, info)
    if why:
        raise UserError(f"checkpoint {tag_dir} is damaged ({why}); use an earlier one")
    return info


def damage(tag_dir, marker):
    """Why checkpoint folder tag_dir is not what its marker says it is, or None."""
    name = os.path.basename(os.path.normpath(tag_dir))
    if name.endswith(UNIVERSAL_SUFFIX):
        return None  # a converted copy carries its source's marker, not a list of its own files
    step = marker.get("step") if isinstance(marker, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or tag_of(step) != name:
        return f"its {MARKER} says step {step!r}, but the folder is {name}"
    files = marker.get("files", {})  # markers from before the list: nothing to compare
    for file, size in files.items() if isinstance(files, dict) else ():
        path = os.path.join(tag_dir, file)
        if not os.path.isfile(path):
            return f"{file} is missing"
        if os.path.getsize(path) != size:
            return f"{file} is {os.path.getsize(path)} bytes, its {MARKER} says {size}"
    return None


def _files_of(tag_dir):
    """{file name: size in bytes} of what DeepSpeed wrote into a checkpoint folder."""
    return {name: os.path.getsize(os.path.join(tag_dir, name)) for name in sorted(os.listdir(tag_dir))
            if os.path.isfile(os.path.join(tag_dir, name)) and not name.startswith(MARKER)}


def check_loadable(tag_dir):
    """Open every file of a checkpoint that DeepSpeed could unpickle with torch.load(weights_only=True) first.

    DeepSpeed itself loads with weights_only=False, and a planted file runs code as it is unpickled: a run
    folder on a shared filesystem is often group-writable. So every *.pt under tag_dir (DeepSpeed names
    every file it loads so), in subfolders too (a universal checkpoint keeps its optimizer state in
    zero/<param>/*.pt) and through symbolic links, must hold tensors and plain values only. A file with
    code is refused by name, as is one truncated or not a checkpoint (instead of failing deep inside
    DeepSpeed). Only each file's pickle is read: the tensors' storages are mapped, not copied, so this
    costs milliseconds per file whatever the model's size.
    """
    files = _pickled_files(tag_dir)
    if not files:
        raise UserError(f"checkpoint {tag_dir} holds no .pt files; delete that folder, then resume from the one "
                        "before it with --resume auto")
    for path in files:
        try:
            with open(path, "rb") as f:
                mappable = f.read(4) == b"PK\x03\x04"  # torch's zip format; the legacy one cannot be mapped
            with torch.serialization.safe_globals(_deepspeed_safe_globals()):
                torch.load(path, map_location="cpu", weights_only=True, mmap=mappable)
        except Exception as error:  # noqa: BLE001 - any failure here means the file cannot be trusted
            raise _refusal(path, tag_dir, error) from None


def _pickled_files(tag_dir):
    """Every *.pt under tag_dir, subfolders included, following links as a loader would (each folder once)."""
    files, seen = [], set()
    for folder, subfolders, names in os.walk(tag_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders.sort()
        files += [os.path.join(folder, name) for name in sorted(names) if name.endswith(".pt")]
    return files


def _refusal(path, tag_dir, error):
    message = str(error)
    if tag_dir.rstrip(os.sep).endswith(UNIVERSAL_SUFFIX):
        fix = f"delete {tag_dir}: a resume converts {tag_dir.rstrip(os.sep)[: -len(UNIVERSAL_SUFFIX)]} again"
    else:
        fix = f"delete {tag_dir} to resume from (or export) an earlier one"
    if isinstance(error, pickle.UnpicklingError) and "WeightsUnpickler error:" in message:
        # torch's own text is a paragraph on how to load the file anyway; keep what the file asked for
        reason = message.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
        reason = reason.split(" was not an allowed global")[0].strip() or "an unsupported pickle instruction"
        return UserError(f"checkpoint file {path} holds code, not only tensors ({reason}); refusing to load it: "
                         "DeepSpeed writes tensors and plain values only, so someone or something replaced it (check "
                         f"who can write to the run folder); {fix}")
    reason = message.strip().splitlines()[0][:200] if message.strip() else type(error).__name__
    return UserError(f"checkpoint file {path} cannot be loaded safely ({reason}); it is truncated or not "
                     f"a checkpoint of ours: {fix}")


def fp32_state_dict(root, tag, objective):
    """The fp32 weights of checkpoint root/tag of `objective`'s model (ZeRO shards consolidated). Every file
    of the checkpoint is vetted first: zero_to_fp32 unpickles them with weights_only=False."""
    stage = read_marker(os.path.join(root, tag))["zero_stage"]
    check_loadable(os.path.join(root, tag))
    if stage > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    return _zero0_fp32_state(objective, os.path.join(root, tag, "mp_rank_00_model_states.pt"))


def _zero0_fp32_state(objective, path):
    """The module's weights of a ZeRO-0 checkpoint, in fp32 even under bf16/fp16.

    Under mixed precision the module copy is rounded to 16 bits; the optimizer keeps the fp32
    masters in the order of the objective's parameter groups, which map them back. DeepSpeed
    0.19 saves them as `fp32_groups_flat` (one flat tensor per group: its fused optimizer, the
    default on GPUs) or `fp32_groups` (a list per group: any other optimizer, e.g. torch's AdamW).
    A 16-bit module without masters is refused: exporting its rounded weights would be a silent loss.
    """
    saved = torch.load(path, map_location="cpu", weights_only=True)
    state = dict(saved["module"])
    optimizer = saved.get("optimizer") if isinstance(saved.get("optimizer"), dict) else {}
    groups = [g["params"] for g in objective.parameter_groups(0.0) if g["params"]]
    if optimizer.get("fp32_groups_flat") is not None:
        flats = optimizer["fp32_groups_flat"]
        masters = [list(flat.split([p.numel() for p in params])) if flat.numel() == sum(p.numel() for p in params)
                   else [flat] for flat, params in zip(flats, groups)]  # a mismatch is reported below
    elif optimizer.get("fp32_groups") is not None:
        masters = optimizer["fp32_groups"]
    else:
        rounded = sorted(name for name, tensor in state.items() if tensor.dtype in (torch.float16, torch.bfloat16))
        if rounded:
            raise UserError(f"checkpoint {os.path.dirname(path)} holds {len(rounded)} weights in 16 bits (e.g. "
                            f"{rounded[0]}) and no fp32 master copy this exporter knows ({os.path.basename(path)} has "
                            "neither fp32_groups_flat nor fp32_groups); exporting them would lose precision silently")
        return state
    name_of = {id(p): n for n, p in objective.named_parameters()}
    sizes = [sum(p.numel() for p in params) for params in groups]
    found = [sum(m.numel() for m in group_masters) for group_masters in masters]
    if found != sizes:
        raise UserError(f"checkpoint {os.path.dirname(path)}: the optimizer's fp32 masters hold {found} values per "
                        f"parameter group, the run's model {sizes}; it is not a checkpoint of this run's model")
    for params, group_masters in zip(groups, masters):
        for param, master in zip(params, group_masters):
            state[name_of[id(param)]] = master.view(param.shape)
    return state


def to_universal(root, tag):
    """Convert CKPT/tag to CKPT/tag_universal (once) with DeepSpeed's converter. Rank 0 only.

    The converter unpickles CKPT/tag and DeepSpeed then unpickles CKPT/tag_universal, each with
    weights_only=False: the caller vets both with check_loadable, the copy every time it is used (a
    folder found here, its marker included, may have been written by anyone who can write to CKPT)."""
    source, target = os.path.join(root, tag), os.path.join(root, tag + UNIVERSAL_SUFFIX)
    if os.path.exists(os.path.join(target, MARKER)):
        return tag + UNIVERSAL_SUFFIX
    shutil.rmtree(target, ignore_errors=True)
    command = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", source,
               "--output_folder", target, "--num_extract_workers", "1", "--num_merge_workers", "1"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise UserError(f"could not convert checkpoint {source} for a different number of ranks: {tail[0]}")
    shutil.copy(os.path.join(source, MARKER), os.path.join(target, MARKER))
    return tag + UNIVERSAL_SUFFIX


def _write_json_atomic(path, value):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _deepspeed_safe_globals():
    """The plain classes DeepSpeed pickles into its checkpoints besides tensors."""
    allowed = []
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler

        allowed += [LossScaler, DynamicLossScaler]
    except ImportError:
        pass
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum

        allowed.append(ZeroStageEnum)
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed.append(fragment_address)
    except ImportError:
        pass
    return allowed
