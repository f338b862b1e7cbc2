"""spanbert_ds/data/tokenizer.py: loading users' tokenizers as Hugging Face does, and refusing the ones
whose word starts cannot be found."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from spanbert_ds.data.tokenizer import load_tokenizer, tokenizer_meta, word_start_table
from spanbert_ds.errors import UserError

transformers = pytest.importorskip("transformers")


def test_vocab_txt_ids_are_line_numbers_as_in_hugging_face(tmp_path):
    # a duplicate line ("the") and an empty line: BertTokenizer numbers lines, keeping the last duplicate
    lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "the", "sat", "", "on", "mat", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n")
    ours = load_tokenizer(tmp_path / "vocab.txt")
    hf = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=True)
    text = "the cats sat on the mat"
    assert ours.encode(text, add_special_tokens=False).ids == hf.convert_tokens_to_ids(hf.tokenize(text))
    assert tokenizer_meta(ours)["vocab_size"] == len(lines)  # rows for every id, holes included
    assert len(word_start_table(ours)) == len(lines)


def test_a_bpe_without_word_start_markers_is_refused(tmp_path):
    tok = Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(["some words to merge", "more words"] * 20,
                            trainers.BpeTrainer(vocab_size=120, special_tokens=specials, end_of_word_suffix="</w>"))
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(UserError, match="does not mark where words start"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_a_vocab_with_holes_exports_with_the_same_ids(tmp_path):
    from spanbert_ds.interop.hf import write_tokenizer_files
    from tests.model.synthetic import tiny_config

    lines = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "the", "sat", "on", "mat", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(lines) + "\n")
    ours = load_tokenizer(tmp_path / "vocab.txt")
    out = tmp_path / "hf"
    out.mkdir()
    write_tokenizer_files(ours, str(out), tiny_config(vocab_size=len(lines)))
    hf = transformers.BertTokenizer(str(out / "vocab.txt"), do_lower_case=True)
    text = "the cats sat on the mat"
    assert hf.convert_tokens_to_ids(hf.tokenize(text)) == ours.encode(text, add_special_tokens=False).ids


def test_a_sentencepiece_style_bpe_marking_words_in_its_normalizer_is_accepted(tmp_path):
    from tokenizers import normalizers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(["some words to merge", "more words"] * 20, trainers.BpeTrainer(vocab_size=80, special_tokens=specials))
    tok.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    table = word_start_table(loaded)
    ids = loaded.encode("some words", add_special_tokens=False)
    assert [bool(table[i]) for i in ids.ids].count(True) >= 1


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
@pytest.mark.slow
def test_a_line_of_a_million_characters_without_spaces_does_not_stall_training(tmp_path, kind):
    """The trainers' time grows with the square of a word's length: such a "word" is dropped (WordPiece
    encodes it as [UNK]) or cut into 100-character pieces (BPE) before they see it."""
    import random
    import subprocess
    import sys

    rng = random.Random(0)
    giant = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1_000_000))
    corpus = tmp_path / "corpus.txt"
    from tests.conftest import SMALL_TEXT

    corpus.write_text(SMALL_TEXT * 20 + giant + "\n" + SMALL_TEXT)
    done = subprocess.run([sys.executable, "-m", "spanbert_ds.cli", "prepare", str(corpus), str(tmp_path / "out"),
                           "--tokenizer", kind, "--vocab-size", "300", "--allow-smaller-vocab"],
                          capture_output=True, text=True, timeout=120)  # it took minutes before
    assert done.returncode == 0, done.stderr[-2000:]


def test_ctrl_c_acts_while_a_trainer_runs():
    """The Rust trainer runs in a worker thread, so the main thread takes Ctrl-C at once."""
    import signal
    import subprocess
    import sys
    import time

    # SIGINT's Python handler is put back first: a shell's background job (nohup ... &) starts with SIGINT ignored
    code = ("import signal, threading; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from spanbert_ds.data.tokenizer import _interruptible; print('started', flush=True); "
            "_interruptible(threading.Event().wait)")  # a wait that Python's signal handling cannot enter
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "started"
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=5)
    assert "KeyboardInterrupt" in stderr
