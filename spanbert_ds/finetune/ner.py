"""Named-entity recognition on CoNLL files: read sentences, label each word's first piece, score as conlleval.

Input: CoNLL-2003 files (`token POS chunk NER` per line, whitespace-separated) or 2-column `token tag` files:
the token is the first column, the tag the last; a blank line ends a sentence and `-DOCSTART-` lines are
skipped. Tags are taken as given (CoNLL-2003's original files are IOB1, some copies IOB2; nothing is
converted): `O` or PREFIX-TYPE with a prefix out of B, I, E, S, L, U. Their ids are the sorted tags of the
training file (`fit_labels`).

A row is `[CLS] pieces [SEP]` (segment 0). The words are tokenized as running text would be (each word
after the first with its leading space, so a byte-level BPE sees `Ġword` as in pretraining); a word's tag
goes on its first piece and every other position is -100 (ignored by the loss), as BERT's CoNLL recipe
does. A sentence of more than max_seq_len - 2 pieces is split at word boundaries into the fewest rows that
hold it, as evenly as those allow, never truncated; `evaluate` puts the rows back together so every word
of every sentence is predicted, from its first piece. Two rare cases keep that true: a word that the
tokenizer turns into nothing (a zero-width character) gets [UNK] as its piece, and a single word of more
than max_seq_len - 2 pieces keeps only that many (`truncated` counts such words; `split` counts the
sentences of more than one row, both of the last `features` call).

Metrics: seqeval's default mode, which follows conlleval (a chunk starts at B-, at an I- after O or
after another type, and at a type change; so IOB1 `I-PER I-PER` is one entity and `I-PER B-PER` two):
entity-level micro precision, recall and F1 over all types, and the F1 of each type (`f1_PER`, ...).
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spanbert_ds.data.tokenizer import tokenizer_meta
from spanbert_ds.errors import UserError

IGNORE = -100  # no loss, no prediction (CrossEntropyLoss's ignore_index)
TAG = re.compile(r"O|[BIESLU]-\S+")


@dataclass(frozen=True, slots=True)
class Sentence:
    words: tuple
    tags: tuple
    source: str  # the file, for messages
    line: int  # the first word's line (1-based); word w is on line + w


def read_conll(path):
    """The sentences of a CoNLL file, in file order (UserError on bad input)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass a CoNLL file (one `token ... tag` line per word, a blank "
                        f"line after each sentence)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    sentences, words, tags, first = [], [], [], 0

    def end_sentence():
        nonlocal words, tags
        if words:
            sentences.append(Sentence(tuple(words), tuple(tags), str(path), first))
        words, tags = [], []

    for number, line in enumerate(text.splitlines(), 1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            end_sentence()
            continue
        if len(columns) == 1:
            raise UserError(f"{path}: line {number} has one column ({columns[0][:40]!r}); a CoNLL line is "
                            f"`token tag` or `token POS chunk tag`, the NER tag last")
        tag = columns[-1]
        if not TAG.fullmatch(tag):
            raise UserError(f"{path}: line {number}: the last column {tag[:40]!r} is not an entity tag (O, B-TYPE, "
                            f"I-TYPE, ...); the NER tag must be the last column")
        if not words:
            first = number
        words.append(columns[0])
        tags.append(tag)
    end_sentence()
    if not sentences:
        raise UserError(f"{path}: no sentences in the file; a CoNLL file has one `token ... tag` line per word "
                        f"and a blank line after each sentence")
    return sentences


def split_words(counts, budget):
    """[(first word, end word)] rows covering the words in order, none over `budget` pieces (each count must
    be at most budget): the fewest rows, then the smallest largest row, filled greedily."""
    counts = [int(c) for c in counts]
    fewest = _greedy(counts, budget)
    if len(fewest) == 1:
        return fewest
    cap = max(-(-sum(counts) // len(fewest)), max(counts))  # no row can be smaller than an even share
    while len(rows := _greedy(counts, cap)) > len(fewest):  # ends at cap == budget at the latest
        cap += 1
    return rows


def _greedy(counts, cap):
    rows, start, used = [], 0, 0
    for w, c in enumerate(counts):
        if used + c > cap:
            rows.append((start, w))
            start, used = w, 0
        used += c
    rows.append((start, len(counts)))
    return rows


class NerPredictions(list):
    """[(words, gold tags, predicted tags)] per sentence, in file order."""


class NerTask:
    """Token classification of CoNLL files; the contract of a task is in finetune/tasks.py."""

    name = "ner"
    head = "token"
    hf_architecture = "BertForTokenClassification"  # the task; interop/task_hf.py picks the backbone's class
    predictions_file = "predictions.txt"
    target_keys = ("labels",)

    def __init__(self, tokenizer, max_seq_len=128, *, labels=None):
        if max_seq_len < 3:
            raise UserError(f"--max-seq-len {max_seq_len} leaves no room for a word between [CLS] and [SEP]; "
                            f"give at least 3")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.labels = list(labels) if labels is not None else None
        self.truncated = 0  # words cut to max_seq_len - 2 pieces by the last features() call
        self.split = 0  # sentences of more than one row in the last features() call
        meta = tokenizer_meta(tokenizer)
        self.cls_id, self.sep_id, self.pad_id, self.unk_id = (meta["cls_id"], meta["sep_id"], meta["pad_id"],
                                                              meta["unk_id"])

    def read(self, path):
        """The sentences of a CoNLL file (see the module docstring)."""
        return read_conll(path)

    def fit_labels(self, train_examples):
        """labels = the sorted tags of the training sentences."""
        self.labels = sorted({tag for s in train_examples for tag in s.tags})

    def _tag_ids(self, sentences):
        index = {tag: i for i, tag in enumerate(self.labels)}
        out = []
        for s in sentences:
            for w, tag in enumerate(s.tags):
                if tag not in index:
                    raise UserError(f"{s.source}: line {s.line + w} has the tag {tag!r}, which the training file "
                                    f"does not have (its tags: {', '.join(self.labels)}); fix the tag or train on "
                                    f"a file that has it")
            out.append(np.array([index[tag] for tag in s.tags], dtype=np.int64))
        return out

    def _pieces(self, sentences):
        """Per sentence (ids int64 (P,), each word's first piece (W,), each word's piece count (W,))."""
        budget = self.max_seq_len - 2
        words = [[s.words[0], *(" " + w for w in s.words[1:])] for s in sentences]
        encodings = self.tokenizer.encode_batch(words, is_pretokenized=True, add_special_tokens=False)
        out = []
        for s, e in zip(sentences, encodings):
            ids = np.array(e.ids, dtype=np.int64)
            word_ids = np.array(e.word_ids, dtype=np.int64)  # no special tokens, so never None
            counts = np.bincount(word_ids, minlength=len(s.words))
            if counts.min() == 0 or counts.max() > budget:  # rare: rebuild word by word
                self.truncated += int((counts > budget).sum())
                pieces = [ids[word_ids == w][:budget] if counts[w] else np.array([self.unk_id], dtype=np.int64)
                          for w in range(len(s.words))]
                ids, counts = np.concatenate(pieces), np.array([len(p) for p in pieces])
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            out.append((ids, starts, counts))
        return out

    def features(self, examples, train):
        """One row per sentence, or per part of a long one. Model inputs input_ids (pad_id), token_type_ids
        (all 0), attention_mask: int64 (N, max_seq_len); labels int64 (N, max_seq_len), the tag id on each
        word's first piece and -100 elsewhere (eval files are labelled too, so also without train). For
        evaluate: example_index int64 (N,), the sentence of each row, and word_index int64 (N, max_seq_len),
        the word (in its sentence) whose first piece is at that position, -1 elsewhere."""
        if self.labels is None:
            raise ValueError("NerTask.features before fit_labels: the tag ids are not known yet")
        T = self.max_seq_len
        tag_ids = self._tag_ids(examples)
        self.truncated = self.split = 0
        pieces = self._pieces(examples)
        plan = []  # (sentence, first word, end word)
        for i, (_, _, counts) in enumerate(pieces):
            rows = split_words(counts, T - 2)
            self.split += len(rows) > 1
            plan += [(i, a, b) for a, b in rows]
        N = len(plan)
        input_ids = np.full((N, T), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((N, T), dtype=np.int64)
        labels = np.full((N, T), IGNORE, dtype=np.int64)
        word_index = np.full((N, T), -1, dtype=np.int64)
        for r, (i, a, b) in enumerate(plan):
            ids, starts, counts = pieces[i]
            lo, hi = starts[a], starts[b - 1] + counts[b - 1]
            input_ids[r, 0] = self.cls_id
            input_ids[r, 1:hi - lo + 1] = ids[lo:hi]
            input_ids[r, hi - lo + 1] = self.sep_id
            attention_mask[r, :hi - lo + 2] = 1
            first_pieces = 1 + starts[a:b] - lo  # positions in the row, after [CLS]
            labels[r, first_pieces] = tag_ids[i][a:b]
            word_index[r, first_pieces] = np.arange(a, b)
        example_index = np.array([i for i, _, _ in plan], dtype=np.int64)
        return {"input_ids": input_ids, "token_type_ids": np.zeros((N, T), dtype=np.int64),
                "attention_mask": attention_mask, "labels": labels, "example_index": example_index,
                "word_index": word_index}

    def predict_tags(self, examples, features, logits):
        """Each sentence's predicted tags, from the logits (N, max_seq_len, len(labels)) at its words' first pieces."""
        logits = np.asarray(logits)
        word_index, example_index = features["word_index"], features["example_index"]
        if logits.shape != (*word_index.shape, len(self.labels)):
            raise ValueError(f"logits {logits.shape} for features of {word_index.shape} and {len(self.labels)} tags")
        lengths = np.array([len(s.words) for s in examples], dtype=np.int64)
        first_word = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # of each sentence, in all the words
        rows, cols = np.nonzero(word_index >= 0)
        predicted = np.full(lengths.sum(), -1, dtype=np.int64)
        predicted[first_word[example_index[rows]] + word_index[rows, cols]] = logits[rows, cols].argmax(axis=-1)
        if (predicted < 0).any():
            raise ValueError("some words have no first piece in the features: features and examples do not match")
        return [[self.labels[t] for t in predicted[f:f + n]] for f, n in zip(first_word, lengths)]

    def evaluate(self, examples, features, logits):
        """({"precision", "recall", "f1", "f1_TYPE"..., "count"}, NerPredictions) (see the module docstring)."""
        from seqeval.metrics import classification_report  # imports sklearn: only when scoring

        predicted = self.predict_tags(examples, features, logits)
        gold = [list(s.tags) for s in examples]
        report = classification_report(gold, predicted, output_dict=True, zero_division=0)
        micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
        metrics = {"precision": float(micro["precision"]), "recall": float(micro["recall"]),
                   "f1": float(micro["f1-score"])}
        for name, scores in report.items():
            if not name.endswith(" avg"):
                metrics[f"f1_{name}"] = float(scores["f1-score"])
        metrics["count"] = len(examples)
        predictions = NerPredictions((s.words, s.tags, tuple(p)) for s, p in zip(examples, predicted))
        return metrics, predictions

    def write_predictions(self, predictions, path):
        """predictions.txt as conlleval reads it: `token gold predicted` per word, a blank line after each
        sentence; written whole, then renamed into place."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            for words, gold, predicted in predictions:
                f.writelines(f"{w} {g} {p}\n" for w, g, p in zip(words, gold, predicted))
                f.write("\n")
        os.replace(tmp, path)
