"""Classification reading, row building, truncation and scoring, with the real uncased BERT tokenizer (and a
small byte-level BPE). Token counts in the comments are the MiniLM tokenizer's, checked in `tok`."""

import json
import os

import numpy as np
import pytest
from sklearn.metrics import f1_score

from spanbert_ds.data.tokenizer import load_tokenizer, train_tokenizer
from spanbert_ds.errors import UserError
from spanbert_ds.finetune.classify import ClassifyTask, macro_f1, read_examples, truncated_lengths

CLS, SEP, PAD = 101, 102, 0


@pytest.fixture(scope="module")
def tok(bert_vocab_file):
    tok = load_tokenizer(os.path.join(os.path.dirname(bert_vocab_file), "tokenizer.json"))
    for word in ("the", "cat", "sat", "on", "mat", "dog"):
        assert len(tok.encode(word, add_special_tokens=False).ids) == 1, word
    return tok


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def task_on(tok, tmp_path, text, name="train.tsv", max_seq_len=16):
    task = ClassifyTask(tok, max_seq_len)
    examples = task.read(write(tmp_path, name, text))
    task.fit_labels(examples)
    return task, examples


def test_a_single_text_row_is_cls_text_sep_then_padding(tok, tmp_path):
    task, examples = task_on(tok, tmp_path, "text\tlabel\nthe cat sat\tanimal\nthe mat\tthing\n", max_seq_len=8)
    f = task.features(examples, train=True)
    assert set(f) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert all(a.dtype == np.int64 and len(a) == 2 for a in f.values())
    # [CLS] the cat sat [SEP] + 3 [PAD]
    assert f["input_ids"][0].tolist() == [CLS, *ids(tok, "the cat sat"), SEP, PAD, PAD, PAD]
    assert f["attention_mask"][0].tolist() == [1] * 5 + [0] * 3
    assert f["token_type_ids"].sum() == 0
    assert task.labels == ["animal", "thing"] and f["labels"].tolist() == [0, 1]
    assert task.truncated == 0


def test_a_pair_has_segment_one_on_the_second_text_and_its_sep(tok, tmp_path):
    task, examples = task_on(tok, tmp_path, "text\ttext_pair\tlabel\nthe cat\ton the mat\tyes\nthe dog\tsat\tno\n",
                             max_seq_len=10)
    f = task.features(examples, train=True)
    # [CLS] the cat [SEP] on the mat [SEP] [PAD] [PAD]: 4 tokens of segment 0, then 4 of segment 1
    assert f["input_ids"][0].tolist() == [CLS, *ids(tok, "the cat"), SEP, *ids(tok, "on the mat"), SEP, PAD, PAD]
    assert f["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert f["attention_mask"][0].tolist() == [1] * 8 + [0] * 2
    assert f["token_type_ids"][1].tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 0, 0]  # [CLS] the dog [SEP] sat [SEP]
    assert task.labels == ["no", "yes"] and f["labels"].tolist() == [1, 0]


def _longest_first_loop(len_a, len_b, budget):
    """BERT's _truncate_seq_pair, one token at a time: the reference for truncated_lengths."""
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return len_a, len_b


def test_pair_truncation_cuts_the_longer_text_first_as_bert_does():
    # a = 6, b = 3, budget 7: the loop cuts a twice (6>3, 5>3) -> (4, 3); closed form min(6, max(7-3, 4)) = 4
    assert truncated_lengths(6, 3, 7) == (4, 3)
    # a = b = 5, budget 7: b, a, b -> (4, 3); ties cut b, so a keeps ceil(7/2) = 4
    assert truncated_lengths(5, 5, 7) == (4, 3)
    # a = 2, b = 10, budget 8: only b is cut -> (2, 6)
    assert truncated_lengths(2, 10, 8) == (2, 6)
    for a in range(12):
        for b in range(12):
            for budget in range(1, 14):
                assert truncated_lengths(a, b, budget) == _longest_first_loop(a, b, budget), (a, b, budget)


def test_too_long_inputs_are_truncated_and_counted(tok, tmp_path):
    words = "the cat sat on the mat the dog sat"  # 9 tokens
    text = f"text\ttext_pair\tlabel\n{words}\tthe cat\ta\nthe cat\tthe mat\tb\n"
    task, examples = task_on(tok, tmp_path, text, max_seq_len=8)
    f = task.features(examples, train=True)
    # budget 8 - 3 = 5: a = 9, b = 2 -> a keeps 3, b keeps 2: [CLS] the cat sat [SEP] the cat [SEP]
    assert f["input_ids"][0].tolist() == [CLS, *ids(tok, "the cat sat"), SEP, *ids(tok, "the cat"), SEP]
    assert f["token_type_ids"][0].tolist() == [0] * 5 + [1] * 3
    assert task.truncated == 1
    single, examples = task_on(tok, tmp_path, f"text\tlabel\n{words}\ta\nthe\tb\n", max_seq_len=6)
    f = single.features(examples, train=True)
    assert f["input_ids"][0].tolist() == [CLS, *ids(tok, "the cat sat on"), SEP]  # 6 - 2 = 4 tokens kept
    assert single.truncated == 1


def test_csv_tsv_and_jsonl_give_the_same_examples(tmp_path):
    csv_text = 'label,text,text_pair,extra\npos,"a fine, dry day",a day,x\nneg,"he said ""no""",b,y\n'
    tsv_text = 'text\ttext_pair\tlabel\na fine, dry day\ta day\tpos\nhe said "no"\tb\tneg\n'
    jsonl_text = ('{"text": "a fine, dry day", "text_pair": "a day", "label": "pos"}\n\n'
                  '{"text": "he said \\"no\\"", "text_pair": "b", "label": "neg", "id": 7}\n')
    read = [read_examples(write(tmp_path, name, text))
            for name, text in (("d.csv", csv_text), ("d.tsv", tsv_text), ("d.jsonl", jsonl_text))]
    for examples in read:
        assert [(e.text, e.text_pair, e.label) for e in examples] == [("a fine, dry day", "a day", "pos"),
                                                                      ('he said "no"', "b", "neg")]
    assert [e.line for e in read[2]] == [1, 3]
    numbers = read_examples(write(tmp_path, "n.jsonl", '{"text": "x", "label": 1}\n'))
    assert numbers[0].label == "1" and numbers[0].text_pair is None


def test_accuracy_and_macro_f1_on_a_worked_example(tok, tmp_path):
    task, examples = task_on(tok, tmp_path, "text\tlabel\nthe\tA\ncat\tA\nsat\tB\non\tB\nmat\tC\n")
    f = task.features(examples, train=False)
    predicted = [0, 1, 1, 1, 0]  # gold A A B B C, predicted A B B B A
    logits = np.eye(3, dtype=np.float32)[predicted]
    metrics, predictions = task.evaluate(examples, f, logits)
    # A: TP 1 FP 1 FN 1 -> 2/4 = 0.5; B: TP 2 FP 1 FN 0 -> 4/5 = 0.8; C: TP 0 FP 0 FN 1 -> 0; mean 1.3/3
    assert metrics == pytest.approx({"accuracy": 3 / 5, "macro_f1": 1.3 / 3, "count": 5})
    assert metrics["macro_f1"] == pytest.approx(f1_score(f["labels"], predicted, average="macro"))
    assert predictions[1] == {"index": 1, "label": "B", "gold": "A", "text": "cat"}


def test_macro_f1_counts_a_class_only_predicted_as_sklearn_does():
    gold, predicted = [0, 0], [0, 1]
    # class 0: TP 1 FN 1 -> 2/3; class 1: FP 1 -> 0; mean 1/3
    assert macro_f1(gold, predicted) == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        gold, predicted = rng.integers(0, 5, 30), rng.integers(0, 5, 30)
        assert macro_f1(gold, predicted) == pytest.approx(f1_score(gold, predicted, average="macro"))


def test_predictions_are_written_as_json_lines(tok, tmp_path):
    task, examples = task_on(tok, tmp_path, "text\ttext_pair\tlabel\nthe cat\ton the mat\tyes\nthe dog\tsat\tno\n")
    f = task.features(examples, train=False)
    _, predictions = task.evaluate(examples, f, np.array([[0.0, 1.0], [0.0, 1.0]]))
    path = tmp_path / task.predictions_file
    task.write_predictions(predictions, path)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"index": 0, "label": "yes", "gold": "yes", "text": "the cat", "text_pair": "on the mat"},
                     {"index": 1, "label": "yes", "gold": "no", "text": "the dog", "text_pair": "sat"}]
    assert sorted(os.listdir(tmp_path)) == sorted(["train.tsv", "predictions.jsonl"])  # no temporary left


def test_labels_given_at_construction_are_kept(tok, tmp_path):
    task = ClassifyTask(tok, 16, labels=["z", "a"])
    f = task.features(task.read(write(tmp_path, "t.tsv", "text\tlabel\nthe\ta\n")), train=True)
    assert task.labels == ["z", "a"] and f["labels"].tolist() == [1]


def test_byte_level_bpe_rows_use_its_own_special_tokens(tmp_path):
    bpe = train_tokenizer("bpe", ["the quick brown fox jumps over the lazy dog"] * 20, 300)
    s, sep, pad = bpe.token_to_id("<s>"), bpe.token_to_id("</s>"), bpe.token_to_id("<pad>")
    task, examples = task_on(bpe, tmp_path, "text\ttext_pair\tlabel\nthe fox\tlazy dog\ta\nthe dog\tfox\tb\n",
                             max_seq_len=24)
    f = task.features(examples, train=True)
    a, b = ids(bpe, "the fox"), ids(bpe, "lazy dog")
    row = [s, *a, sep, *b, sep]
    assert f["input_ids"][0].tolist() == row + [pad] * (24 - len(row))
    assert f["token_type_ids"][0].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (24 - len(row))


# ---- bad input: one UserError each, naming the file and what to do ----

def test_a_missing_file_is_a_user_error(tok, tmp_path):
    with pytest.raises(UserError, match="no such file"):
        ClassifyTask(tok).read(tmp_path / "nope.csv")


def test_an_unknown_extension_is_a_user_error(tok, tmp_path):
    with pytest.raises(UserError, match=r"unknown format '\.txt'.*\.csv, \.tsv"):
        ClassifyTask(tok).read(write(tmp_path, "d.txt", "text\tlabel\n"))


@pytest.mark.parametrize("name, text, message", [
    ("empty.csv", "", "the file is empty"),
    ("blank.tsv", "\n\n", "the file is empty"),
    ("header_only.tsv", "text\tlabel\n", "no examples"),
    ("empty.jsonl", "\n", "no examples"),
    ("no_header.tsv", "the cat\tanimal\nthe mat\tthing\n", r"no text or label column; it has 'the cat', 'animal'"),
    ("no_label.csv", "text,category\nthe cat,animal\n", r"no label column; it has 'text', 'category'"),
    ("empty_text.tsv", "text\tlabel\nthe cat\ta\n  \tb\n", "line 3 has an empty text"),
    ("empty_label.csv", "text,label\nthe cat,\n", "line 2 has an empty label"),
    ("columns.tsv", "text\tlabel\nthe\tcat\ta\n", "line 2 has 3 columns, the header 2"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n', "line 2 is not JSON"),
    ("list.jsonl", '["a", "x"]\n', "line 1 is a JSON list, not an object"),
    ("no_key.jsonl", '{"sentence": "a", "label": "x"}\n', "line 1 has no 'text' key"),
    ("empty_text.jsonl", '{"text": "", "label": "x"}\n', "line 1 has an empty text"),
    ("not_utf8.csv", b"text,label\n\xff,x\n", "not UTF-8"),
    ("huge_field.csv", "text,label\n" + "a" * 140_000 + ",x\n", "line 2 cannot be read as CSV"),
])
def test_bad_files_are_one_line_user_errors(tok, tmp_path, name, text, message):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=message) as error:
        ClassifyTask(tok).read(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_an_unknown_label_in_an_eval_file_names_file_line_and_the_known_labels(tok, tmp_path):
    task, _ = task_on(tok, tmp_path, "text\tlabel\nthe\tpos\ncat\tneg\n")
    dev = write(tmp_path, "dev.jsonl", '{"text": "the", "label": "pos"}\n{"text": "cat", "label": "neutral"}\n')
    with pytest.raises(UserError, match=r"dev\.jsonl: line 2 has the label 'neutral'.*its labels: neg, pos"):
        task.features(task.read(dev), train=False)


def test_a_training_file_with_one_label_is_a_user_error(tok, tmp_path):
    task = ClassifyTask(tok)
    with pytest.raises(UserError, match="every example has the label 'pos'"):
        task.fit_labels(task.read(write(tmp_path, "t.tsv", "text\tlabel\nthe\tpos\ncat\tpos\n")))
