"""CoNLL reading, first-piece labelling, splitting long sentences and merging them back, and conlleval-style
scoring, with the real uncased BERT tokenizer (and a small byte-level BPE). Piece counts in the comments are
the MiniLM tokenizer's, checked in `tok`."""

import os

import numpy as np
import pytest

from spanbert_ds.data.tokenizer import load_tokenizer, train_tokenizer
from spanbert_ds.errors import UserError
from spanbert_ds.finetune.ner import IGNORE, NerTask, split_words

CLS, SEP, PAD, UNK = 101, 102, 0, 100
PIECES = {"john": 1, "smith": 1, "in": 1, "new": 1, "york": 1, "the": 1, "cat": 1, "sat": 1, "mat": 1,
          "tokenization": 2, "xylophone": 3}  # token ##ization; x ##yl ##ophone

CONLL = """-DOCSTART- -X- -X- O

John NNP B-NP B-PER
Smith NNP I-NP I-PER
tokenization NN I-NP O
in IN B-PP O
New NNP B-NP B-LOC
York NNP I-NP I-LOC

the DT B-NP O
cat NN I-NP B-MISC
"""


@pytest.fixture(scope="module")
def tok(bert_vocab_file):
    tok = load_tokenizer(os.path.join(os.path.dirname(bert_vocab_file), "tokenizer.json"))
    for word, n in PIECES.items():
        assert len(tok.encode(word, add_special_tokens=False).ids) == n, word
    return tok


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def trained(tok, tmp_path, text=CONLL, max_seq_len=16, name="train.txt"):
    task = NerTask(tok, max_seq_len)
    sentences = task.read(write(tmp_path, name, text))
    task.fit_labels(sentences)
    return task, sentences


def one_hot(features, tags_per_position, n_labels):
    """Logits (N, T, C) that predict tags_per_position[r, t] (where >= 0)."""
    logits = np.zeros((*features["input_ids"].shape, n_labels), dtype=np.float32)
    r, t = np.nonzero(tags_per_position >= 0)
    logits[r, t, tags_per_position[r, t]] = 1.0
    return logits


def test_conll_files_are_read_as_sentences_with_the_last_column_as_tag(tok, tmp_path):
    task, sentences = trained(tok, tmp_path)
    assert [s.words for s in sentences] == [("John", "Smith", "tokenization", "in", "New", "York"), ("the", "cat")]
    assert sentences[0].tags == ("B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC")
    assert [s.line for s in sentences] == [3, 10]
    assert task.labels == ["B-LOC", "B-MISC", "B-PER", "I-LOC", "I-PER", "O"]
    two_columns = task.read(write(tmp_path, "two.txt", "the O\ncat B-MISC\n\n\nJohn I-PER"))  # no final newline
    assert [(s.words, s.tags) for s in two_columns] == [(("the", "cat"), ("O", "B-MISC")), (("John",), ("I-PER",))]


def test_each_word_is_labelled_on_its_first_piece_only(tok, tmp_path):
    task, sentences = trained(tok, tmp_path, max_seq_len=12)
    f = task.features(sentences, train=True)
    assert set(f) == {"input_ids", "token_type_ids", "attention_mask", "labels", "example_index", "word_index"}
    assert all(a.dtype == np.int64 and len(a) == 2 for a in f.values())
    # [CLS] john smith token ##ization in new york [SEP] [PAD] [PAD] [PAD]: 7 pieces for 6 words
    ization = tok.token_to_id("##ization")
    assert f["input_ids"][0].tolist()[:9] == [CLS, tok.token_to_id("john"), tok.token_to_id("smith"),
                                              tok.token_to_id("token"), ization, tok.token_to_id("in"),
                                              tok.token_to_id("new"), tok.token_to_id("york"), SEP]
    assert f["attention_mask"][0].tolist() == [1] * 9 + [0] * 3
    # labels B-LOC 0, B-MISC 1, B-PER 2, I-LOC 3, I-PER 4, O 5; ##ization (position 4), [CLS], [SEP], padding: -100
    assert f["labels"][0].tolist() == [IGNORE, 2, 4, 5, IGNORE, 5, 0, 3, IGNORE, IGNORE, IGNORE, IGNORE]
    assert f["word_index"][0].tolist() == [-1, 0, 1, 2, -1, 3, 4, 5, -1, -1, -1, -1]
    assert f["labels"][1].tolist()[:4] == [IGNORE, 5, 1, IGNORE]  # [CLS] the cat [SEP]
    assert f["example_index"].tolist() == [0, 1] and f["token_type_ids"].sum() == 0
    assert task.split == 0 and task.truncated == 0


def test_gold_logits_on_first_pieces_give_back_every_tag_and_a_perfect_score(tok, tmp_path):
    task, sentences = trained(tok, tmp_path)
    f = task.features(sentences, train=False)
    wrong_elsewhere = np.where(f["labels"] >= 0, f["labels"], 1)  # B-MISC on every ignored position: unused
    metrics, predictions = task.evaluate(sentences, f, one_hot(f, wrong_elsewhere, len(task.labels)))
    assert [p[2] for p in predictions] == [s.tags for s in sentences]
    # gold entities: PER (John Smith), LOC (New York), MISC (cat): all found
    assert metrics == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "f1_LOC": 1.0, "f1_MISC": 1.0, "f1_PER": 1.0,
                       "count": 2}


def test_split_words_uses_the_fewest_rows_as_evenly_as_word_boundaries_allow():
    # counts 3 1 2 1 1 1 (9 pieces), budget 4: greedy 3+1 | 2+1+1 | 1 needs 3 rows; an even share is 3 pieces,
    # and a cap of 3 also gives 3 rows: 3 | 1+2 | 1+1+1
    assert split_words([3, 1, 2, 1, 1, 1], 4) == [(0, 1), (1, 3), (3, 6)]
    assert split_words([1, 1, 1], 4) == [(0, 3)]
    # 8 ones, budget 5: greedy 5 | 3; a cap of 4 gives 4 | 4
    assert split_words([1] * 8, 5) == [(0, 4), (4, 8)]
    # 4 4 1, budget 5: at least 2 rows; cap max(ceil(9/2), 4) = 5 -> 4 | 4+1
    assert split_words([4, 4, 1], 5) == [(0, 1), (1, 3)]


def test_a_long_sentence_is_split_into_rows_and_merged_back_word_for_word(tok, tmp_path):
    words = ["xylophone", "cat", "tokenization", "the", "mat", "sat"]  # pieces 3 1 2 1 1 1, as above
    tags = ["B-MISC", "O", "B-PER", "I-PER", "O", "B-LOC"]
    text = "".join(f"{w} {t}\n" for w, t in zip(words, tags)) + "\nJohn B-PER\n"
    task, sentences = trained(tok, tmp_path, text, max_seq_len=6)  # 4 pieces a row
    f = task.features(sentences, train=False)
    assert f["example_index"].tolist() == [0, 0, 0, 1] and task.split == 1
    assert f["word_index"].tolist() == [[-1, 0, -1, -1, -1, -1],  # [CLS] x ##yl ##ophone [SEP]
                                        [-1, 1, 2, -1, -1, -1],  # [CLS] cat token ##ization [SEP]
                                        [-1, 3, 4, 5, -1, -1],  # [CLS] the mat sat [SEP]
                                        [-1, 0, -1, -1, -1, -1]]  # [CLS] john [SEP]
    assert (f["input_ids"][:, 0] == CLS).all()
    assert [row[m.sum() - 1] for row, m in zip(f["input_ids"], f["attention_mask"])] == [SEP] * 4
    # 5 labels (B-LOC B-MISC B-PER I-PER O); predict word w of sentence 0 as label w mod 5 and John as label
    # (0 + 4) mod 5 = 4: the merge must restore that order
    predicted = np.where(f["word_index"] >= 0, (f["word_index"] + 4 * f["example_index"][:, None]) % 5, -1)
    tags_back = task.predict_tags(sentences, f, one_hot(f, predicted, len(task.labels)))
    assert tags_back == [[*task.labels, task.labels[0]], ["O"]]


def test_a_word_without_pieces_gets_unk_and_an_overlong_word_is_cut_but_still_predicted(tok, tmp_path):
    # a zero-width space is removed by BERT's normalizer: no piece of its own; xylophone has 3 pieces > 4 - 2
    task, sentences = trained(tok, tmp_path, "the O\n\u200b O\nxylophone B-MISC\n", max_seq_len=4)
    f = task.features(sentences, train=False)
    assert f["input_ids"].tolist() == [[CLS, tok.token_to_id("the"), UNK, SEP], [CLS, tok.token_to_id("x"),
                                                                               tok.token_to_id("##yl"), SEP]]
    assert task.truncated == 1 and task.split == 1
    metrics, predictions = task.evaluate(sentences, f, one_hot(f, f["labels"], len(task.labels)))
    assert predictions[0][2] == ("O", "O", "B-MISC") and metrics["f1"] == 1.0


def test_iob1_tags_are_scored_like_conlleval(tok, tmp_path):
    words = ["john", "smith", "in", "new", "york", "the", "cat"]
    gold = ["I-PER", "I-PER", "O", "I-PER", "B-PER", "O", "I-LOC"]
    pred = ["I-PER", "I-PER", "O", "I-PER", "I-PER", "O", "I-LOC"]
    task, sentences = trained(tok, tmp_path, "".join(f"{w} {t}\n" for w, t in zip(words, gold)))
    f = task.features(sentences, train=False)
    ids = np.full_like(f["word_index"], -1)
    first_pieces = f["word_index"][0] >= 0
    ids[0, first_pieces] = [task.labels.index(pred[w]) for w in f["word_index"][0, first_pieces]]
    metrics, _ = task.evaluate(sentences, f, one_hot(f, ids, len(task.labels)))
    # gold chunks: PER 0-1 (I-PER I-PER is one), PER 3, PER 4 (B-PER after I-PER starts another), LOC 6 -> 4
    # predicted: PER 0-1, PER 3-4, LOC 6 -> 3; correct: PER 0-1, LOC 6 -> 2
    # PER: P 1/2, R 1/3, F 2 (1/6) / (5/6) = 0.4; LOC: 1; micro: P 2/3, R 2/4, F 2 (1/3) / (7/6) = 4/7
    assert metrics == pytest.approx({"precision": 2 / 3, "recall": 1 / 2, "f1": 4 / 7, "f1_LOC": 1.0, "f1_PER": 0.4,
                                     "count": 1})


def test_predictions_are_written_in_conll_format(tok, tmp_path):
    task, sentences = trained(tok, tmp_path)
    f = task.features(sentences, train=False)
    all_o = np.where(f["labels"] >= 0, task.labels.index("O"), -1)
    _, predictions = task.evaluate(sentences, f, one_hot(f, all_o, len(task.labels)))
    path = tmp_path / task.predictions_file
    task.write_predictions(predictions, path)
    assert path.read_text() == ("John B-PER O\nSmith I-PER O\ntokenization O O\nin O O\nNew B-LOC O\nYork I-LOC O\n\n"
                                "the O O\ncat B-MISC O\n\n")
    assert sorted(os.listdir(tmp_path)) == ["predictions.txt", "train.txt"]


def test_byte_level_bpe_words_get_their_leading_space_and_first_piece_labels(tmp_path):
    bpe = train_tokenizer("bpe", ["the quick brown fox jumps over the lazy dog"] * 20, 300)
    task, sentences = trained(bpe, tmp_path, "the O\nquick O\nfox B-ANIMAL\nzebra I-ANIMAL\n", max_seq_len=24)
    f = task.features(sentences, train=True)
    pieces = bpe.encode("the quick fox zebra", add_special_tokens=False)  # as running text
    row = [bpe.token_to_id("<s>"), *pieces.ids, bpe.token_to_id("</s>")]
    assert f["input_ids"][0].tolist() == row + [bpe.token_to_id("<pad>")] * (24 - len(row))
    first = [1 + pieces.word_ids.index(w) for w in range(4)]
    assert np.nonzero(f["labels"][0] >= 0)[0].tolist() == first
    assert pieces.tokens[first[2] - 1] == "Ġfox"
    metrics, predictions = task.evaluate(sentences, f, one_hot(f, f["labels"], len(task.labels)))
    assert predictions[0][2] == sentences[0].tags and metrics["f1"] == 1.0


# ---- bad input: one UserError each, naming the file and what to do ----

@pytest.mark.parametrize("name, text, message", [
    ("missing.txt", None, "no such file"),
    ("empty.txt", "", "no sentences"),
    ("docstart.txt", "-DOCSTART- -X- -X- O\n\n", "no sentences"),
    ("one_column.txt", "John B-PER\nSmith\n", r"line 2 has one column \('Smith'\)"),
    ("pos_last.txt", "John NNP\n", r"line 1: the last column 'NNP' is not an entity tag"),
    ("not_utf8.txt", b"John B-PER\n\xff O\n", "not UTF-8"),
])
def test_bad_files_are_one_line_user_errors(tok, tmp_path, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=message) as error:
        NerTask(tok).read(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_an_unknown_tag_in_an_eval_file_names_file_line_and_the_known_tags(tok, tmp_path):
    task, _ = trained(tok, tmp_path, "John B-PER\nSmith I-PER\nsat O\n")
    dev = write(tmp_path, "dev.txt", "the O\n\ncat B-MISC\n")
    with pytest.raises(UserError, match=r"dev\.txt: line 3 has the tag 'B-MISC'.*its tags: B-PER, I-PER, O"):
        task.features(task.read(dev), train=False)
