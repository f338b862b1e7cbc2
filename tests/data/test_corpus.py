import json
import sys

import pytest

from spanbert_ds.data.corpus import Corpus, python_docs
from spanbert_ds.errors import UserError


def test_text_file_blank_lines_separate_documents_and_lines_are_sentences(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First one.\n  Second one.  \n\n\n\nOther doc.\r\n   \nLast doc\n")
    assert list(Corpus(path).documents()) == [["First one.", "Second one."], ["Other doc."], ["Last doc"]]


def test_jsonl_text_field_is_a_document_split_into_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "One.\nTwo.\n\n", "id": 3}) + "\n\n" + json.dumps({"text": "Three."}) + "\n")
    assert list(Corpus(path).documents()) == [["One.", "Two."], ["Three."]]


def test_folder_reads_files_in_sorted_order_and_skips_hidden(tmp_path):
    (tmp_path / "b.txt").write_text("B.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text('{"text": "C."}\n')
    (tmp_path / "a.txt").write_text("A.\n")
    (tmp_path / ".hidden").write_text("H.\n")
    assert list(Corpus(tmp_path).documents()) == [["A."], ["B."], ["C."]]


def test_progress_counts_every_byte(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("héllo\n\nworld\nagain")
    seen = []
    list(Corpus(path).documents(progress=seen.append))
    assert sum(seen) == path.stat().st_size == Corpus(path).total_bytes


def test_replace_flag_turns_bad_bytes_into_replacement_characters(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"ok\nbad \xff byte\n")
    assert list(Corpus(path, encoding_errors="replace").documents()) == [["ok", "bad \ufffd byte"]]
    with pytest.raises(UserError, match=r"line 2 \(byte offset 7\)"):
        list(Corpus(path).documents())


def test_line_limit_counts_bytes_without_the_newline(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"x" * 10 + b"\r\n" + b"y" * 11 + b"\n")
    with pytest.raises(UserError, match="line 2"):
        list(Corpus(path, max_line_bytes=10).documents())


@pytest.mark.slow  # reads the whole standard library: ~12 s
def test_python_docs_is_about_two_megabytes_of_english_in_a_fixed_order_without_imports():
    docs = python_docs()
    size = sum(len(s) for d in docs for s in d)
    assert 1_500_000 < size < 3_000_000
    assert all(d and all(s.strip() == s and s for s in d) for d in docs)
    assert docs == python_docs.__wrapped__()  # recomputed from scratch: same documents, same order
    assert "antigravity" not in sys.modules and "tkinter" not in sys.modules
    text = " ".join(docs[0])
    assert "assert" in text  # pydoc topics come first, sorted by name
    assert not any(set(s) == {"*"} for d in docs for s in d)  # reST underlines dropped


def test_a_long_document_streams_in_pieces_and_rejoins(tmp_path):
    path = tmp_path / "one.txt"
    lines = [f"Sentence number {i} of a file with no blank line." for i in range(50)]
    path.write_text("\n".join(lines) + "\n\nA second document.\n")
    pieces = list(Corpus(path).pieces(max_bytes=400))
    assert len(pieces) > 5 and all(sum(map(len, p)) < 400 + 60 for p, _ in pieces)
    assert [ends for _, ends in pieces].count(True) == 2 and pieces[-1] == (["A second document."], True)
    assert [s for p, _ in pieces for s in p] == lines + ["A second document."]
    assert list(Corpus(path).documents()) == [lines, ["A second document."]]
