"""`spanbert-ds merge PART_1 ... PART_N OUT`: join the folders of `prepare --part I/N` into the shard
folder one prepare of the whole corpus makes, byte for byte (same ids, order, held-out split, meta.json).

The parts are checked first, in one line each: every part of 1..N once, all made from one corpus with one
tokenizer (sha256) and the same settings. Their files are then copied one after another (offsets shifted),
streaming, into OUT.tmp-PID under OUT.lock, renamed to OUT when complete, as prepare does.
"""

import json
import shutil
from pathlib import Path

from spanbert_ds.data.prepare import _check_not_empty, _replace
from spanbert_ds.data.shards import FILES, VALID_FOLDER, ShardWriter, Shards, file_sha256
from spanbert_ds.errors import UserError
from spanbert_ds.folders import (FolderLock, check_creatable, check_replaceable, make_parents, remove_made,
                                 remove_stale_siblings, temporary_sibling)

# meta.json keys that differ from part to part (the writer's counts) or that only a part has
PER_PART = ("token_dtype", "n_tokens", "n_documents", "n_sentences", "max_id", "part")


def add_arguments(parser):
    parser.add_argument("parts", nargs="+", metavar="PART", help="the folders of `prepare --part I/N`, all N of them "
                                                                 "(any order; a glob such as 'parts/*' works)")
    parser.add_argument("out", help="the shard folder to create")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="no summary")


def run(args):
    shards = merge(args.parts, args.out, overwrite=args.overwrite)
    if not args.quiet:
        print(shards)
    return 0


def merge(parts, out, overwrite=False):
    """Join the part folders into `out`; returns the opened Shards."""
    out = Path(out)
    check_creatable(out, "output", writes_beside=True)
    check_replaceable(out, "output", overwrite)
    parts = _ordered(parts)
    made = make_parents(out)
    try:
        with FolderLock(f"{out}.lock", f"output {out}"):
            check_replaceable(out, "output", overwrite)
            remove_stale_siblings(out)
            tmp = Path(temporary_sibling(out))
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            try:
                _merge_into(tmp, parts)
                _replace(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BaseException:
        remove_made(made)
        raise
    return Shards(out)


def _meta(folder):
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"part {folder} is not a folder; pass the folders `spanbert-ds prepare --part I/N` made")
    for name in FILES:
        if not (folder / name).is_file():
            raise UserError(f"part {folder} has no {name}; prepare it again with `spanbert-ds prepare ... --part I/N`")
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except ValueError as e:
        raise UserError(f"{folder / 'meta.json'} is not valid JSON ({e}); prepare that part again") from None
    if "part" not in meta:
        raise UserError(f"{folder} is a whole shard folder, not a part; merge joins the folders of "
                        "`spanbert-ds prepare --part I/N`")
    return meta


def _ordered(parts):
    """(folder, meta) of the parts in order 1..N, after checking that they are N parts of one prepare."""
    import glob

    folders = [Path(m) for p in map(str, parts) for m in (sorted(glob.glob(p)) if glob.has_magic(p) else [p])]
    metas = [(f, _meta(f)) for f in folders]
    first, first_meta = metas[0]
    n = first_meta["part"]["of"]
    common = {k: v for k, v in first_meta.items() if k not in PER_PART}
    by_index = {}
    for folder, meta in metas:
        if meta["part"]["of"] != n:
            raise UserError(f"{folder} is part {meta['part']['index']}/{meta['part']['of']}, but {first} is part "
                            f"{first_meta['part']['index']}/{n}: give the parts of one `prepare --part I/N` run")
        if meta["tokenizer_sha256"] != first_meta["tokenizer_sha256"]:
            raise UserError(f"{folder} was encoded with another tokenizer than {first} (tokenizer sha256 "
                            f"{meta['tokenizer_sha256'][:12]} vs {first_meta['tokenizer_sha256'][:12]}); prepare "
                            "every part with the same --tokenizer FILE")
        mine = {k: v for k, v in meta.items() if k not in PER_PART}
        differ = sorted(k for k in set(mine) | set(common) if mine.get(k) != common.get(k))
        if meta["part"]["settings"] != first_meta["part"]["settings"]:
            differ += sorted(k for k in meta["part"]["settings"]
                             if meta["part"]["settings"][k] != first_meta["part"]["settings"].get(k))
        if differ:
            raise UserError(f"{folder} and {first} were prepared differently ({', '.join(differ)}); prepare every "
                            "part with the same corpus and flags")
        if meta["part"]["index"] in by_index:
            raise UserError(f"{folder} and {by_index[meta['part']['index']][0]} are both part "
                            f"{meta['part']['index']}/{n}; pass each part once")
        by_index[meta["part"]["index"]] = (folder, meta)
    missing = [str(i) for i in range(1, n + 1) if i not in by_index]
    if missing:
        raise UserError(f"parts {', '.join(missing)} of {n} are missing (given: "
                        f"{', '.join(str(i) for i in sorted(by_index))}); run `prepare --part I/{n}` for them and "
                        "pass all the folders")
    for folder, meta in by_index.values():
        if file_sha256(folder / "tokenizer.json") != meta["tokenizer_sha256"]:
            raise UserError(f"{folder / 'tokenizer.json'} does not match its meta.json's tokenizer_sha256 (changed "
                            "after prepare); prepare that part again")
    return [by_index[i] for i in range(1, n + 1)]


def _merge_into(tmp, parts):
    first, meta = parts[0]
    shutil.copy(first / "tokenizer.json", tmp / "tokenizer.json")
    writers = [ShardWriter(tmp, meta["vocab_size"])]
    held_out = "valid_split" in meta
    if held_out:
        (tmp / VALID_FOLDER).mkdir()
        shutil.copy(first / "tokenizer.json", tmp / VALID_FOLDER / "tokenizer.json")
        writers.append(ShardWriter(tmp / VALID_FOLDER, meta["vocab_size"]))
    try:
        for folder, _ in parts:
            writers[0].append_folder(folder)
            if held_out:
                writers[1].append_folder(folder / VALID_FOLDER)
        source = meta["valid_split"]["source"] if held_out else None
        fraction = source.get("fraction", 0.0) if isinstance(source, dict) else 0.0
        _check_not_empty(writers, meta["corpus"], None if fraction or not held_out else source, fraction,
                         source.get("seed", 0) if isinstance(source, dict) else 0)
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    if held_out:
        valid_meta = json.loads((first / VALID_FOLDER / "meta.json").read_text())
        writers[1].close({k: v for k, v in valid_meta.items() if k not in PER_PART})
    writers[0].close({k: v for k, v in meta.items() if k not in PER_PART})
