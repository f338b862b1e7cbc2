"""The input formats of `spanbert_ds/data/corpus.py`: recognised by content, compressed or not, and
everything else refused in one line before anything is written."""

import bz2
import gzip
import json
import lzma
import os
import re
import sys
import tarfile
import threading

import pytest

from spanbert_ds.cli import main
from spanbert_ds.data.corpus import Corpus
from spanbert_ds.data.prepare import prepare
from spanbert_ds.errors import UserError

TEXT = "First sentence.\nSecond sentence.\n\nAnother document.\n"
DOCS = [["First sentence.", "Second sentence."], ["Another document."]]
RECORDS = [{"id": "1", "text": "First sentence.\nSecond sentence.\n"}, {"id": "2", "text": "Another document."}]
JSONL = "".join(json.dumps(r) + "\n" for r in RECORDS)


def zstd_compress(data):
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress(data)


COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "zst": zstd_compress}
NAME = {"gz": "gzip", "bz2": "bzip2", "xz": "xz", "zst": "zstd"}


def documents(source, **kwargs):
    return list(Corpus(source, **kwargs).documents())


def refusal(source, **kwargs):
    """The one-line message Corpus(source) refuses with (before anything is read)."""
    with pytest.raises(UserError) as e:
        list(Corpus(source, **kwargs).documents())
    message = str(e.value)
    assert "\n" not in message
    return message


def fails(capsys, tmp_path, *argv):
    """Run `spanbert-ds prepare *argv --quiet`: its one-line error; no output, lock or temporary folder left."""
    code = main(["prepare", *map(str, argv), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    left = [p for p in os.listdir(tmp_path) if p.startswith("out")]
    assert left == [], left
    return err


@pytest.mark.parametrize("suffix", ["gz", "bz2", "xz", "zst"])
@pytest.mark.parametrize("content", ["text", "jsonl"])
def test_compressed_files_read_like_the_plain_file_whatever_their_name(tmp_path, suffix, content):
    data = (TEXT if content == "text" else JSONL).encode()
    named = tmp_path / f"corpus.{'txt' if content == 'text' else 'jsonl'}.{suffix}"
    named.write_bytes(COMPRESS[suffix]((data + b"\n") * 300))
    unnamed = tmp_path / "blob"  # no extension: the magic number says what it is
    unnamed.write_bytes(COMPRESS[suffix](data))
    assert documents(unnamed) == DOCS
    corpus = Corpus(named)
    assert list(corpus.documents()) == DOCS * 300
    assert corpus.kind(named) == f"{content}+{NAME[suffix]}"
    seen = []
    list(corpus.documents(progress=seen.append))
    assert sum(seen) == named.stat().st_size == corpus.total_bytes  # progress counts the compressed bytes


def test_json_lines_are_recognised_by_content_whatever_the_name(tmp_path):
    for name in ("a.json", "wiki_00", "b.txt"):
        (tmp_path / name).write_text(JSONL)
        assert documents(tmp_path / name) == DOCS, name
    # text that merely starts with a bracket or brace stays text
    (tmp_path / "c.txt").write_text("[1] Introduction.\n{curly} words.\n")
    assert documents(tmp_path / "c.txt") == [["[1] Introduction.", "{curly} words."]]


def test_json_key_chooses_the_field_and_a_missing_one_names_the_fields_seen(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1, "body": "One.\\nTwo."}\n{"id": 2, "body": "Three."}\n')
    assert documents(path, json_key="body") == [["One.", "Two."], ["Three."]]
    message = refusal(path)
    assert 'a.jsonl: line 1 has no string field "text" (its fields: id, body)' in message
    assert "--json-key" in message


def test_json_that_is_not_json_lines_is_refused(tmp_path):
    (tmp_path / "pretty.json").write_text(json.dumps(RECORDS, indent=2))
    assert "a JSON document spread over lines" in refusal(tmp_path / "pretty.json")
    (tmp_path / "array.json").write_text(json.dumps(RECORDS))
    assert "a JSON array, not JSON lines" in refusal(tmp_path / "array.json")
    (tmp_path / "bad.jsonl").write_text(JSONL + '{"text": "unclosed\n')
    assert "bad.jsonl: line 3 (byte offset" in refusal(tmp_path / "bad.jsonl")


def wikiextractor_json(records):
    return "".join(json.dumps({"id": str(i), "revid": "9", "url": f"https://x/?curid={i}", "title": title,
                               "text": text}) + "\n" for i, (title, text) in enumerate(records))


def wikiextractor_doc(records):
    return "".join(f'<doc id="{i}" url="https://x/?curid={i}" title="{title}">\n{title}\n\n{text}\n</doc>\n'
                   for i, (title, text) in enumerate(records))


WIKI = [("Anarchism", "Anarchism is a political philosophy.\nIt is sceptical of authority."),
        ("Redirect page", ""),  # WikiExtractor writes redirects and stubs with no text
        ("Albedo", "Albedo is the fraction of sunlight that is reflected.\n\nIt is measured from 0 to 1.")]
WIKI_DOCS = [["Anarchism is a political philosophy.", "It is sceptical of authority."],
             ["Albedo is the fraction of sunlight that is reflected.", "It is measured from 0 to 1."]]


@pytest.mark.parametrize("output", ["json", "doc"])
def test_wikiextractor_folders_give_one_document_per_article_without_the_title_line(tmp_path, output):
    write = wikiextractor_json if output == "json" else wikiextractor_doc
    (tmp_path / "text" / "AA").mkdir(parents=True)
    (tmp_path / "text" / "AB").mkdir()
    (tmp_path / "text" / "AA" / "wiki_00").write_text(write(WIKI))
    (tmp_path / "text" / "AA" / "wiki_01").write_text(write(WIKI[:1]))
    (tmp_path / "text" / "AB" / "wiki_00").write_bytes(bz2.compress(write(WIKI[2:]).encode()))  # wikiextractor -c
    assert documents(tmp_path / "text") == WIKI_DOCS + WIKI_DOCS[:1] + WIKI_DOCS[1:]


def test_wikiextractor_doc_that_never_closes_is_refused_with_its_line(tmp_path):
    path = tmp_path / "wiki_00"
    path.write_text(wikiextractor_doc(WIKI) + '<doc id="7" url="u" title="Cut">\nCut\n\nThe file ends here')
    assert "wiki_00: the <doc> opened at line 19 has no </doc>" in refusal(path)


def write_parquet(path, rows, row_group_size=2, **columns):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": rows, **columns}), path, row_group_size=row_group_size)


def test_parquet_rows_are_documents_read_by_row_group(tmp_path):
    path = tmp_path / "part-0.parquet"
    write_parquet(path, ["First sentence.\nSecond sentence.", None, "", "Another document."], id=[1, 2, 3, 4])
    corpus = Corpus(path)
    assert list(corpus.documents()) == DOCS and corpus.kind(path) == "parquet"
    seen = []
    list(corpus.documents(progress=seen.append))
    assert sum(seen) == path.stat().st_size
    message = refusal(path, json_key="content")
    assert 'part-0.parquet: has no column "content" (its columns: text, id)' in message and "--json-key" in message
    assert 'column "id" holds int64, not text' in refusal(path, json_key="id")


def write_arrow_stream(path, rows):
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"text": rows, "n": list(range(len(rows)))})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=1):
            writer.write_batch(batch)


def datasets_folder(folder, shards):
    """What datasets' save_to_disk writes: Arrow IPC streams listed in state.json, and dataset_info.json."""
    folder.mkdir()
    names = [f"data-{i:05d}-of-{len(shards):05d}.arrow" for i in range(len(shards))]
    for name, rows in zip(names, shards):
        write_arrow_stream(folder / name, rows)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in reversed(names)],
                                                   "_fingerprint": "0", "_split": "train"}, indent=2))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string"}}}, indent=2))
    return folder


def test_datasets_folder_reads_its_arrow_files_in_state_json_order(tmp_path):
    folder = datasets_folder(tmp_path / "train", [["Another document."], ["First sentence.\nSecond sentence."]])
    assert documents(folder) == DOCS  # state.json lists data-00001 first
    assert documents(folder / "data-00000-of-00002.arrow") == DOCS[1:]  # one cache file alone
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train"]}')
    message = refusal(tmp_path)
    assert "is a Hugging Face DatasetDict with the splits train; pass one split's folder" in message


def test_a_real_datasets_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["First sentence.\nSecond sentence.", "Another document."],
                                "id": [1, 2]}).save_to_disk(str(tmp_path / "ds"), num_shards=2)
    assert documents(tmp_path / "ds") == DOCS


def test_a_folder_of_mixed_kinds_reads_each_file_by_its_content_in_path_order(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(JSONL.encode()))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "wiki_00").write_text(wikiextractor_doc(WIKI))
    write_parquet(tmp_path / "d.parquet", ["Parquet row."])
    datasets_folder(tmp_path / "e", [["Arrow row."]])
    assert documents(tmp_path) == DOCS + DOCS + WIKI_DOCS + [["Parquet row."], ["Arrow row."]]


def test_a_quoted_glob_reads_the_files_it_matches(tmp_path):
    for i in range(3):
        (tmp_path / "shards" / f"part{i}").mkdir(parents=True)
        (tmp_path / "shards" / f"part{i}" / f"{i}.jsonl.gz").write_bytes(
            gzip.compress(json.dumps({"text": f"Document {i}."}).encode() + b"\n"))
    (tmp_path / "shards" / "part1" / "notes.txt").write_text("Not matched.\n")
    assert documents(f"{tmp_path}/shards/**/*.jsonl.gz") == [["Document 0."], ["Document 1."], ["Document 2."]]
    assert documents(f"{tmp_path}/shards/part[12]") == [["Document 1."], ["Not matched."], ["Document 2."]]
    assert documents(f"{tmp_path}/shards/**") == [["Document 0."], ["Document 1."], ["Not matched."],
                                                 ["Document 2."]]  # folders and their files: each file once
    assert "matches no file" in refusal(f"{tmp_path}/shards/*.parquet")


def tar_gz(path):
    inner = path.parent / "inner.txt"
    inner.write_text(TEXT)
    with tarfile.open(path, "w:gz", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(inner, arcname="inner.txt")
    inner.unlink()


@pytest.mark.parametrize("name, data, seen", [
    ("data.bin", b"\x7fELF\x02\x01\x01\x00" + bytes(100), "starts with bytes 7f 45 4c 46 02 01 01 00 (an ELF binary)"),
    ("paper.txt", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "starts with bytes 25 50 44 46 2d 31 2e 37 (a PDF document"),
    ("corpus.zip", b"PK\x03\x04\x14\x00\x00\x00" + bytes(40), "(a zip archive"),
    ("utf16.txt", "Text in UTF-16.\n".encode("utf-16"),
     "starts with bytes ff fe 54 00 65 00 78 00 (UTF-16 text; re-encode it"),
    ("weights.npy", b"\x00\x01\x02\x03" * 50, "starts with bytes 00 01 02 03 00 01 02 03 (NUL bytes in its first 200"),
    ("random", bytes(range(128, 256)) * 2, "are neither UTF-8 text nor whitespace"),
    ("corpus.tar.gz", None, "not text (inside its gzip compression): starts with bytes 69 6e 6e 65 72 2e 74 78 "
                            "(a tar archive; unpack it first"),
])
def test_what_is_not_text_is_refused_naming_its_first_bytes(capsys, tmp_path, name, data, seen):
    path = tmp_path / "in" / name
    path.parent.mkdir()
    if data is None:
        tar_gz(path)
    else:
        path.write_bytes(data)
    for mode in ("strict", "replace", "skip"):
        message = refusal(path, encoding_errors=mode)
        assert message.startswith(f"{path}: not text") and seen in message, message
    (tmp_path / "in" / "good.txt").write_text(TEXT)  # one bad file in a folder refuses the folder
    err = fails(capsys, tmp_path, tmp_path / "in", tmp_path / "out", "--encoding-errors", "replace")
    assert f"{path}: not text" in err and seen in err


def test_a_fifo_is_refused_at_once_leaving_no_lock_or_temporary_folder(capsys, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=main(["prepare", str(fifo), str(tmp_path / "out"),
                                                                      "--quiet"])), daemon=True)
    thread.start()
    thread.join(10)
    try:
        assert not thread.is_alive(), "prepare hangs reading the FIFO"
    finally:
        if thread.is_alive():  # old code: unblock its open() so the thread can end
            with open(fifo, "wb"):
                pass
            thread.join(10)
    err = capsys.readouterr().err.strip()
    assert result["code"] == 2 and len(err.splitlines()) == 1
    assert f"input {fifo} is a FIFO (named pipe), not a regular file or folder" in err
    assert sorted(os.listdir(tmp_path)) == ["fifo"]  # no out, out.lock or out.tmp-PID


def big_text(lines=6000):
    return "".join(f"Line {i} of a long document about nothing in particular.\n" + ("\n" if i % 7 == 6 else "")
                   for i in range(lines)).encode()


@pytest.mark.parametrize("suffix", ["gz", "bz2", "xz", "zst"])
def test_a_truncated_archive_deep_in_a_folder_names_the_file_and_offset(capsys, tmp_path, suffix, bert_vocab_file):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(TEXT)
    compress = (lambda b: bz2.compress(b, compresslevel=1)) if suffix == "bz2" else COMPRESS[suffix]  # 100 kB blocks
    data = compress(big_text())
    (tmp_path / "in" / f"b.txt.{suffix}").write_bytes(data[:len(data) // 2])
    err = fails(capsys, tmp_path, tmp_path / "in", tmp_path / "out", "--tokenizer", bert_vocab_file)
    assert f"b.txt.{suffix}: the {NAME[suffix]} data ends early, after line" in err
    assert "of its decompressed text): the file is truncated" in err
    line = int(re.search(r"after line (\d+) \(byte offset", err).group(1))
    assert 1000 < line < 7000  # the lines before the cut were read: the error comes where the data ends


def test_a_missing_optional_package_is_named_with_the_extra_to_install(tmp_path, monkeypatch):
    (tmp_path / "a.txt.zst").write_bytes(zstd_compress(TEXT.encode()))
    write_parquet(tmp_path / "b.parquet", ["Row."])
    monkeypatch.setitem(sys.modules, "zstandard", None)  # import zstandard raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert "zstandard package is not installed; pip install 'spanbert_ds[formats]'" in refusal(tmp_path / "a.txt.zst")
    assert "pyarrow is not installed; pip install 'spanbert_ds[formats]'" in refusal(tmp_path / "b.parquet")


BAD = b"ok line\nbad \xff line\n\nsecond doc\nalso bad \xfe\n"


def test_encoding_errors_replace_and_skip_go_on_and_count_the_lines(tmp_path):
    path = tmp_path / "a.txt.gz"
    path.write_bytes(gzip.compress(BAD))
    replaced = Corpus(path, encoding_errors="replace")
    assert list(replaced.documents()) == [["ok line", "bad \ufffd line"], ["second doc", "also bad \ufffd"]]
    assert replaced.bad_lines == 2
    assert replaced.encoding_note() == (f"{path}: --encoding-errors replace replaced the bad bytes of 2 lines that "
                                        f"are not valid UTF-8 (the first: {path} line 2)")
    skipped = Corpus(path, encoding_errors="skip")
    assert list(skipped.documents()) == [["ok line"], ["second doc"]] and skipped.bad_lines == 2
    message = refusal(path)
    assert "a.txt.gz: line 2 (byte offset 12 of its gzip-decompressed text) is not valid UTF-8" in message
    # NUL bytes after a text-like start are not text either
    path.write_bytes(gzip.compress(b"text first\n" * 500 + b"then \x00\x01\x02 binary\n"))
    assert "a.txt.gz: line 501 (byte offset 5505 of its gzip-decompressed text) holds a NUL byte" in refusal(path)
    skipped = Corpus(path, encoding_errors="skip")
    assert sum(map(len, skipped.documents())) == 500 and skipped.bad_lines == 1


def test_prepare_reports_the_skipped_lines_and_reads_valid_through_the_same_reader(capsys, tmp_path,
                                                                                   bert_vocab_file):
    (tmp_path / "train.txt.xz").write_bytes(lzma.compress(BAD + b"\n" + TEXT.encode()))
    (tmp_path / "plain.txt").write_bytes(b"ok line\n\nsecond doc\n\n" + TEXT.encode())
    (tmp_path / "valid.json").write_bytes(gzip.compress(JSONL.encode()))  # gzip under a .json name
    (tmp_path / "valid.txt").write_text(TEXT)
    code = main(["prepare", str(tmp_path / "train.txt.xz"), str(tmp_path / "out"), "--tokenizer", bert_vocab_file,
                 "--encoding-errors", "skip", "--valid", str(tmp_path / "valid.json"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "--encoding-errors skip skipped 2 lines that are not valid UTF-8 (the first: " in err
    got = prepare(tmp_path / "train.txt.xz", tmp_path / "got", tokenizer=bert_vocab_file, encoding_errors="skip",
                  valid=tmp_path / "valid.json")
    want = prepare(tmp_path / "plain.txt", tmp_path / "want", tokenizer=bert_vocab_file, valid=tmp_path / "valid.txt")
    for a, b in ((got, want), (got.valid, want.valid)):
        assert len(a) == len(b) and [a.document(i).tolist() for i in range(len(a))] == \
            [b.document(i).tolist() for i in range(len(b))]
    assert len(got) == 4 and len(got.valid) == 2
