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


# --- SentencePiece Unigram (DeBERTa-v3's spm.model) ---------------------------------------------------

SPM_PIECES = 1000  # DeBERTa-v3's has 128000; its [MASK] is the id after the last piece, as here
# V3's control pieces and normalisation, as its spm.model holds them
V3_TRAINER = dict(model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
                  eos_piece="[SEP]", unk_piece="[UNK]", normalization_rule_name="nmt_nfkc")
ASCII_SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Return a new list of the items, sorted.",
                   "  leading,  doubled   and trailing spaces  ", "x = f(a, *args, **kwargs)  # a comment",
                   "Tabs\tand UPPER case words", "a [CLS] or [MASK] written in the text"]
# what SentencePiece's nmt_nfkc table changes: an ellipsis, full-width letters, a no-break space, accents
UNICODE_SENTENCES = ["Wait\u2026 then go", "\uff26\uff55\uff4c\uff4c width", "no\u00a0break",
                     "caf\u00e9 na\u00efve \u00fcber"]


def deberta_v3_tokenizer_folder(folder, model_type="unigram"):
    """What DeBERTa-v3's folder ships for its tokenizer: spm.model (a SentencePiece Unigram, trained here on
    the pydoc topics with V3's settings) and tokenizer_config.json, no tokenizer.json."""
    import io
    import json

    spm = pytest.importorskip("sentencepiece")
    from pydoc_data.topics import topics

    lines = [line.strip() for name in sorted(topics) for line in topics[name].splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=SPM_PIECES,
                                   num_threads=1, minloglevel=2, **{**V3_TRAINER, "model_type": model_type})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spm.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "spm"}))
    return folder


@pytest.fixture(scope="module")
def v3_folder(tmp_path_factory):
    return deberta_v3_tokenizer_folder(tmp_path_factory.mktemp("deberta-v3"))


def test_an_spm_model_gives_sentencepieces_ids_and_deberta_v3s_special_ids(v3_folder):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(v3_folder / "spm.model"))
    ours = load_tokenizer(v3_folder / "spm.model")
    meta = tokenizer_meta(ours)
    assert meta["tokenizer_kind"] == "unigram" and meta["lowercase"] is False
    assert (meta["pad_id"], meta["cls_id"], meta["sep_id"], meta["unk_id"]) == (0, 1, 2, 3)
    assert meta["mask_id"] == SPM_PIECES and meta["vocab_size"] == SPM_PIECES + 1  # V3: 128000 and 128001
    ours.encode_special_tokens = True  # as prepare encodes: "[CLS]" in the text is text, as SentencePiece reads it
    for sentence in ASCII_SENTENCES + UNICODE_SENTENCES:
        assert ours.encode(sentence, add_special_tokens=False).ids == sp.encode(sentence), sentence
    ours.encode_special_tokens = False
    assert ours.encode("a b").ids == [1, *sp.encode("a b"), 2]  # [CLS] ... [SEP]
    table = word_start_table(ours)
    assert all(table[i] == sp.id_to_piece(i).startswith("▁") for i in range(4, SPM_PIECES))
    assert not table[[0, 1, 2, 3, SPM_PIECES]].any()


def test_an_spm_folder_gives_transformers_deberta_v2_tokenizers_ids(v3_folder):
    """The folder as transformers opens it (its DebertaV2Tokenizer), on sentences its normaliser and
    SentencePiece's agree on (transformers 5 leaves out the nmt_nfkc table: "\u2026" becomes [UNK] there)."""
    hf = transformers.DebertaV2Tokenizer.from_pretrained(v3_folder)
    ours = load_tokenizer(v3_folder)
    ids = (hf.pad_token_id, hf.cls_token_id, hf.sep_token_id, hf.unk_token_id, hf.mask_token_id)
    assert ids == (0, 1, 2, 3, SPM_PIECES)
    for sentence in ASCII_SENTENCES:
        assert ours.encode(sentence).ids == hf(sentence)["input_ids"], sentence
    assert ours.encode(*ASCII_SENTENCES[:2]).ids == hf(*ASCII_SENTENCES[:2])["input_ids"]


def test_prepare_takes_an_spm_model_or_its_folder(tmp_path, v3_folder):
    import sentencepiece

    from spanbert_ds.data.prepare import prepare
    from tests.conftest import SMALL_TEXT

    (tmp_path / "small.txt").write_text(SMALL_TEXT)
    by_file = prepare(tmp_path / "small.txt", tmp_path / "file", tokenizer=str(v3_folder / "spm.model"))
    by_folder = prepare(tmp_path / "small.txt", tmp_path / "folder", tokenizer=str(v3_folder))
    assert by_file.meta["tokenizer_sha256"] == by_folder.meta["tokenizer_sha256"]
    assert (by_file.meta["tokenizer_kind"], by_file.meta["mask_id"], by_file.vocab_size) == \
        ("unigram", SPM_PIECES, SPM_PIECES + 1)
    sp = sentencepiece.SentencePieceProcessor(model_file=str(v3_folder / "spm.model"))
    lines = [line for line in SMALL_TEXT.splitlines() if line.strip()]
    assert by_file.tokens.tolist() == [i for line in lines for i in sp.encode(line)]
    starts = [sp.id_to_piece(i).startswith("▁") for line in lines for i in sp.encode(line)]
    assert by_file.word_starts.astype(bool).tolist() == starts
    again = load_tokenizer(by_file.path / "tokenizer.json")  # the shard folder keeps it converted
    assert tokenizer_meta(again) == tokenizer_meta(load_tokenizer(v3_folder / "spm.model"))


def test_an_spm_model_that_is_not_unigram_or_is_cut_short_is_one_line(tmp_path, v3_folder):
    bpe = deberta_v3_tokenizer_folder(tmp_path / "bpe", model_type="bpe")
    with pytest.raises(UserError, match="is a SentencePiece BPE model; only Unigram ones"):
        load_tokenizer(bpe)
    (tmp_path / "spm.model").write_bytes((v3_folder / "spm.model").read_bytes()[:5000])
    with pytest.raises(UserError, match="is not a SentencePiece model .* fetch it again"):
        load_tokenizer(tmp_path / "spm.model")
