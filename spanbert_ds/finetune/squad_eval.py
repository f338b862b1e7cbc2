"""The official SQuAD metrics: exact match and token F1, v1.1 and v2.0, with v2.0's no-answer threshold search.

Written after the official evaluation scripts (evaluate-v1.1.py, evaluate-v2.0.py); the numbers are theirs:
- an answer is normalised as lower case -> punctuation removed -> articles a/an/the removed -> whitespace
  collapsed, in that order;
- F1 is the token-level overlap (a multiset intersection) of the normalised prediction and gold answer;
- a question scores the maximum over its gold answers; the dataset scores the mean, in percent.

Where v1.1 and v2.0 differ, each file follows its own script: v2.0 drops gold answers that normalise to
nothing, scores an answerless question against the single gold "", and gives F1 1 when both sides are
empty (0 when only one is); v1.1 keeps every gold and gives F1 0 whenever nothing overlaps.

A question without a prediction scores 0 (the v1.1 script says "Unanswered question ... will receive
score 0"; the v2.0 script leaves it out of the mean, which inflates a partial run, so we do not).

Examples are anything with `id`, `answers` (objects with `.text`) and `squad_v2` (bool) attributes:
spanbert_ds.finetune.squad.SquadExample.
"""

import re
import string
from collections import Counter

import numpy as np

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text):
    """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace (the official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction, gold):
    """1.0 when the normalised strings are equal, else 0.0."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction, gold, squad_v2=True):
    """Token F1 of the normalised strings. With squad_v2 (the v2.0 script) two empty sides score 1 and one
    empty side 0; without (the v1.1 script) no overlap scores 0, empty or not."""
    predicted, wanted = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if squad_v2 and (not predicted or not wanted):
        return float(predicted == wanted)
    overlap = sum((Counter(predicted) & Counter(wanted)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(wanted)
    return 2 * precision * recall / (precision + recall)


def gold_answers(example):
    """The strings a prediction is compared with: v2.0 keeps those that normalise to something, and scores a
    question left with none against "" (the only right answer to an unanswerable question)."""
    texts = [answer.text for answer in example.answers]
    if example.squad_v2:
        texts = [t for t in texts if normalize_answer(t)]
    return texts or [""]  # a v1.1 question without answers (the v1.1 script would stop) is scored against ""


def question_scores(example, prediction):
    """(exact, f1) of one prediction against one example's gold answers, each the best over the golds."""
    golds = gold_answers(example)
    exact = max(exact_match(prediction, g) for g in golds)
    overlap = max(f1(prediction, g, example.squad_v2) for g in golds)
    return exact, overlap


def evaluate(dataset_examples, predictions, null_odds=None, threshold=0.0):
    """The official metrics of `predictions` ({question id: answer text}) on `dataset_examples`.

    Returns {"exact_match", "f1", "count"} (percent, as the official scripts print them). When any example is
    SQuAD v2.0 it also has HasAns_* / NoAns_* (the same three figures over the answerable / unanswerable
    questions; each group only where it has questions). With `null_odds` ({id: null score minus best answer
    score}) a v2.0 question is answered "" where its odds exceed `threshold`, and the best threshold is
    searched as evaluate-v2.0.py does (best_exact, best_exact_thresh, best_f1, best_f1_thresh); there the
    predictions should be each question's best non-empty answer.
    """
    examples = list(dataset_examples)
    if not examples:
        raise ValueError("no examples to evaluate")
    squad_v2 = any(ex.squad_v2 for ex in examples)
    has_answer = np.array([bool(ex.answers) for ex in examples])
    answered = [predictions.get(ex.id) for ex in examples]
    raw = np.array([question_scores(ex, p) if p is not None else (0.0, 0.0) for ex, p in zip(examples, answered)])
    raw = raw.reshape(len(examples), 2)
    if null_odds is None or not squad_v2:
        scores = raw
    else:
        odds = np.array([null_odds.get(ex.id, -np.inf) for ex in examples], dtype=np.float64)
        scores = np.where((odds > threshold)[:, None], (~has_answer)[:, None].astype(float), raw)
    metrics = _summary(scores)
    if squad_v2:
        for prefix, rows in (("HasAns_", has_answer), ("NoAns_", ~has_answer)):
            if rows.any():
                metrics.update({prefix + k: v for k, v in _summary(scores[rows]).items()})
        if null_odds is not None:
            empty = np.array([not p for p in answered])
            for name, column in (("exact", 0), ("f1", 1)):
                best, thresh = best_threshold(raw[:, column], odds, has_answer, empty)
                metrics[f"best_{name}"], metrics[f"best_{name}_thresh"] = best, thresh
    return metrics


def _summary(scores):
    return {"exact_match": 100.0 * float(scores[:, 0].mean()), "f1": 100.0 * float(scores[:, 1].mean()),
            "count": len(scores)}


def best_threshold(raw_scores, null_odds, has_answer, empty_prediction):
    """(best score in percent, its threshold) over all no-answer thresholds, as evaluate-v2.0.py searches.

    Every question starts answered "" (an unanswerable one scores 1); lowering the odds cut-off question by
    question (smallest odds first) switches each to its predicted answer: an answerable question gains its
    raw score, an unanswerable one loses 1 unless the prediction is empty too. The threshold is the odds of the
    last question switched; questions with equal odds switch together (the script can stop inside a tie,
    at a threshold that then means something else). If answering nothing is best, the threshold lies below
    every odds (the script says 0.0 there, which would not reproduce the score).
    """
    if len(null_odds) == 0:
        return 0.0, 0.0
    order = np.argsort(null_odds, kind="stable")
    odds = null_odds[order]
    gain = np.where(has_answer[order], raw_scores[order], np.where(empty_prediction[order], 0.0, -1.0))
    totals = (~has_answer).sum() + np.cumsum(gain)
    last_of_tie = np.append(odds[1:] != odds[:-1], True)
    totals = np.where(last_of_tie, totals, -np.inf)
    best = int(np.argmax(totals))
    if totals[best] <= (~has_answer).sum():
        below = float(odds[0]) - 1.0 if np.isfinite(odds[0]) else 0.0
        return 100.0 * float((~has_answer).sum()) / len(odds), below
    return 100.0 * float(totals[best]) / len(odds), float(odds[best])
