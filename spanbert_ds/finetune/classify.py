"""Classification of single texts or text pairs: read CSV/TSV/JSONL, build [CLS] rows, score accuracy and macro-F1.

Input files, by extension:
- `.csv` / `.tsv`: a header row naming the columns `text`, `label` and, for pairs, `text_pair` (any other
  columns are ignored). CSV is read with Python's csv module (quotes as Excel writes them); TSV is split on
  tabs only, with no quoting, as GLUE's files are.
- `.jsonl`: one object per line with the same keys; a label may be a string or a number (kept as its text).
Every example needs a non-empty text and a label; labels are names (strings), their ids the names' sorted
order in the training file (`fit_labels`), kept in the run's identity and the exported config.

A row is `[CLS] text [SEP]`, or `[CLS] text [SEP] text_pair [SEP]` with segment 1 on the pair and its
[SEP], as BERT's run_classifier builds it (also for a byte-level BPE: `<s> a </s> b </s>`, not RoBERTa's
`</s></s>`). An input too long for max_seq_len loses tokens at its end; a pair loses them longest first
(one token at a time from the longer text, from the pair on a tie, as BERT's _truncate_seq_pair and
transformers' "longest_first" do). The number of truncated examples of the last `features` call is in
`truncated`.
"""

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spanbert_ds.data.tokenizer import tokenizer_meta
from spanbert_ds.errors import UserError

COLUMNS = ("text", "text_pair", "label")
FORMATS = (".csv", ".tsv", ".jsonl")


@dataclass(frozen=True, slots=True)
class TextExample:
    text: str
    text_pair: str | None
    label: str
    source: str  # the file, for messages
    line: int  # where the example starts in it (1-based)


def _short(text, limit=40):
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _open_text(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass a .csv, .tsv (with a header row: text, label, optional "
                        f"text_pair) or .jsonl file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_examples(path):
    """The examples of a classification file, in file order (UserError on bad input)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"{path}: unknown format {path.suffix or '(no extension)'!r}; classification files are "
                        f".csv, .tsv (a header row: text, label, optional text_pair) or .jsonl")
    text = _open_text(path)
    if path.suffix.lower() == ".jsonl":
        examples = list(_read_jsonl(path, text))
    else:
        examples = list(_read_table(path, text, "\t" if path.suffix.lower() == ".tsv" else ","))
    if not examples:
        raise UserError(f"{path}: no examples in the file; give one per row (text, label)")
    return examples


def _read_table(path, text, delimiter):
    kind, quoting = ("TSV", csv.QUOTE_NONE) if delimiter == "\t" else ("CSV", csv.QUOTE_MINIMAL)
    rows = csv.reader(text.splitlines(keepends=True), delimiter=delimiter, quoting=quoting)
    try:
        header = next(rows, None)
        while header is not None and not any(cell.strip() for cell in header):  # blank lines before the header
            header = next(rows, None)
    except csv.Error as e:
        raise UserError(f"{path}: the header row cannot be read as {kind} ({e}); the first row must name the "
                        f"columns text, label and optionally text_pair") from None
    if header is None:
        raise UserError(f"{path}: the file is empty; give a header row (text, label, optional text_pair) and "
                        f"one row per example")
    names = [cell.strip() for cell in header]
    missing = [c for c in ("text", "label") if c not in names]
    if missing:
        raise UserError(f"{path}: the header row (line {rows.line_num}) has no {' or '.join(missing)} column; it "
                        f"has {', '.join(map(repr, names))}; the first row must name the columns text, label and "
                        f"optionally text_pair")
    at = {c: names.index(c) for c in COLUMNS if c in names}
    while True:
        try:
            row = next(rows, None)
        except csv.Error as e:  # a field over csv's size limit, a NUL byte
            raise UserError(f"{path}: line {rows.line_num} cannot be read as {kind} ({e}); fix the row or write "
                            f"the file as .jsonl") from None
        if row is None:
            return
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise UserError(f"{path}: line {rows.line_num} has {len(row)} columns, the header {len(names)}; "
                            + ("a text with a tab cannot be in a .tsv: use .csv or .jsonl" if delimiter == "\t" else
                               "quote a text holding a comma (\"...\")"))
        values = {c: row[i] for c, i in at.items()}
        yield _example(path, rows.line_num, values)


def _read_jsonl(path, text):
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {number} is not JSON ({e.msg}, column {e.colno}); a .jsonl file has one "
                            f"object per line, such as {{\"text\": \"...\", \"label\": \"...\"}}") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: line {number} is a JSON {type(values).__name__}, not an object; give "
                            f"{{\"text\": \"...\", \"label\": \"...\"}}")
        for key in ("text", "label"):
            if key not in values:
                raise UserError(f"{path}: line {number} has no {key!r} key (it has {', '.join(map(repr, values))}); "
                                f"give text, label and optionally text_pair")
        values = {k: v for k, v in values.items() if k in COLUMNS}
        if values.get("text_pair") is None:
            values.pop("text_pair", None)
        for key, value in values.items():
            if key != "label" and not isinstance(value, str):
                raise UserError(f"{path}: line {number}: {key!r} is a {type(value).__name__}; it must be a string")
        if isinstance(values["label"], (dict, list)) or values["label"] is None:
            raise UserError(f"{path}: line {number}: the label must be a string or a number, not "
                            f"{json.dumps(values['label'])[:40]}")
        values["label"] = str(values["label"])
        yield _example(path, number, values)


def _example(path, line, values):
    text, label = values["text"].strip(), values["label"].strip()
    pair = values.get("text_pair")
    pair = pair.strip() if pair is not None else None
    if not text:
        raise UserError(f"{path}: line {line} has an empty text; remove the row or fill it in")
    if not label:
        raise UserError(f"{path}: line {line} has an empty label; every example needs one")
    if pair == "":
        raise UserError(f"{path}: line {line} has an empty text_pair; give the second text, or leave out the "
                        f"text_pair column for single texts")
    return TextExample(text, pair, label, str(path), line)


def label_ids(examples, labels):
    """int64 (N,) ids of the examples' labels in `labels`; UserError naming the first unknown one."""
    index = {name: i for i, name in enumerate(labels)}
    for ex in examples:
        if ex.label not in index:
            raise UserError(f"{ex.source}: line {ex.line} has the label {_short(ex.label)}, which the training "
                            f"file does not have (its labels: {', '.join(labels)}); fix the label or add "
                            f"examples of it to the training file")
    return np.array([index[ex.label] for ex in examples], dtype=np.int64)


def truncated_lengths(len_a, len_b, budget):
    """(kept of a, kept of b) under `budget` tokens, longest first (ties cut b): BERT's _truncate_seq_pair in
    closed form. The shorter text is kept whole when the other can absorb the cut; else a keeps the larger
    half, ceil(budget / 2)."""
    if len_a + len_b <= budget:
        return len_a, len_b
    keep_a = min(len_a, max(budget - len_b, (budget + 1) // 2))
    return keep_a, budget - keep_a


def macro_f1(gold, predicted):
    """Mean over the classes seen in gold or predicted of each class's F1 = 2 TP / (2 TP + FP + FN)
    (sklearn's f1_score(average="macro"))."""
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    classes = np.union1d(gold, predicted)
    if len(classes) == 0:
        return 0.0
    tp = np.array([np.sum((gold == c) & (predicted == c)) for c in classes])
    fp = np.array([np.sum((gold != c) & (predicted == c)) for c in classes])
    fn = np.array([np.sum((gold == c) & (predicted != c)) for c in classes])
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


class ClassifyTask:
    """Single-text or text-pair classification; the contract of a task is in finetune/tasks.py."""

    name = "classify"
    head = "sequence"
    hf_architecture = "BertForSequenceClassification"  # the task; interop/task_hf.py picks the backbone's class
    predictions_file = "predictions.jsonl"
    target_keys = ("labels",)

    def __init__(self, tokenizer, max_seq_len=128, *, labels=None):
        if max_seq_len < 5:
            raise UserError(f"--max-seq-len {max_seq_len} is too short for a text pair and 3 special tokens; "
                            f"give at least 5")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.labels = list(labels) if labels is not None else None
        self.truncated = 0  # examples cut short by the last features() call
        meta = tokenizer_meta(tokenizer)
        self.cls_id, self.sep_id, self.pad_id = meta["cls_id"], meta["sep_id"], meta["pad_id"]

    def read(self, path):
        """The examples of a .csv, .tsv or .jsonl file (see the module docstring)."""
        return read_examples(path)

    def fit_labels(self, train_examples):
        """labels = the sorted label names of the training examples (at least two)."""
        labels = sorted({ex.label for ex in train_examples})
        if len(labels) < 2:
            source = train_examples[0].source if train_examples else "the training file"
            raise UserError(f"{source}: every example has the label {labels[0] if labels else '(none)'!r}; a "
                            f"classifier needs examples of at least two labels")
        self.labels = labels

    def features(self, examples, train):
        """One row per example. Model inputs input_ids (pad_id), token_type_ids, attention_mask: int64
        (N, max_seq_len); labels int64 (N,), the label's index in `labels` (eval files are labelled too, so
        also without train)."""
        if self.labels is None:
            raise ValueError("ClassifyTask.features before fit_labels: the label ids are not known yet")
        T, tok = self.max_seq_len, self.tokenizer
        targets = label_ids(examples, self.labels)
        first = tok.encode_batch([ex.text for ex in examples], add_special_tokens=False)
        pairs = {i: ex.text_pair for i, ex in enumerate(examples) if ex.text_pair is not None}
        second = dict(zip(pairs, tok.encode_batch(list(pairs.values()), add_special_tokens=False)))
        N = len(examples)
        input_ids = np.full((N, T), self.pad_id, dtype=np.int64)
        token_type_ids = np.zeros((N, T), dtype=np.int64)
        attention_mask = np.zeros((N, T), dtype=np.int64)
        self.truncated = 0
        for i, a in enumerate(first):
            a = a.ids
            b = second[i].ids if i in second else None
            if b is None:
                keep_a, keep_b = min(len(a), T - 2), 0
                self.truncated += keep_a < len(a)
            else:
                keep_a, keep_b = truncated_lengths(len(a), len(b), T - 3)
                self.truncated += keep_a + keep_b < len(a) + len(b)
            row = [self.cls_id, *a[:keep_a], self.sep_id]
            if b is not None:
                row += [*b[:keep_b], self.sep_id]
                token_type_ids[i, keep_a + 2:len(row)] = 1  # the pair and its [SEP]
            input_ids[i, :len(row)] = row
            attention_mask[i, :len(row)] = 1
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                "labels": targets}

    def evaluate(self, examples, features, logits):
        """({"accuracy", "macro_f1", "count"}, predictions: one dict per example) from logits (N, len(labels))."""
        logits = np.asarray(logits)
        gold = np.asarray(features["labels"])
        if logits.shape != (len(gold), len(self.labels)):
            raise ValueError(f"logits {logits.shape} for {len(gold)} rows of {len(self.labels)} labels")
        predicted = logits.argmax(axis=1)
        metrics = {"accuracy": float(np.mean(predicted == gold)) if len(gold) else 0.0,
                   "macro_f1": macro_f1(gold, predicted), "count": len(gold)}
        predictions = []
        for i, (ex, p, g) in enumerate(zip(examples, predicted, gold)):
            entry = {"index": i, "label": self.labels[p], "gold": self.labels[g], "text": ex.text}
            if ex.text_pair is not None:
                entry["text_pair"] = ex.text_pair
            predictions.append(entry)
        return metrics, predictions

    def write_predictions(self, predictions, path):
        """predictions.jsonl: one {"index", "label", "gold", "text"[, "text_pair"]} per line, written whole, then
        renamed into place."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for entry in predictions:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
