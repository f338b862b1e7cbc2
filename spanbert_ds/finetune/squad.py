"""SQuAD v1.1 / v2.0 extractive question answering: read the JSON, cut contexts into windows, decode spans.

A window is `[CLS] question [SEP] context tokens [SEP]` (segment 0 up to the first [SEP], 1 after), as
BERT's run_squad builds it: a context longer than one window is covered by windows that start
`doc_stride` tokens apart, the last one reaching the end. The question and each distinct context are
tokenized once (a paragraph's context serves all its questions) and characters are mapped to tokens and
back through the tokenizer's offsets, so an answer is always a slice of the original context.

Decoding follows the official tooling (Google's run_squad, transformers' utils_qa): in each window the
n_best start and end positions among the context tokens, spans with start <= end and at most
max_answer_len tokens, scored start + end logit, the best over all windows of a question. Unlike them we
rank only context positions (they rank every position and then drop the question's, which can leave a
window with no candidate) and we do not apply run_squad's "max context" filter. For v2.0 the null score is
the smallest start[CLS] + end[CLS] over the windows; the question is answered "" when null score minus
best span score exceeds the threshold (0 unless given).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from spanbert_ds.data.tokenizer import tokenizer_meta
from spanbert_ds.errors import UserError
from spanbert_ds.finetune import squad_eval


class Answer(NamedTuple):
    text: str
    start: int  # character offset of text in the context


@dataclass(frozen=True, slots=True)
class SquadExample:
    id: str
    question: str
    context: str  # shared (the same str object) by the questions of one paragraph
    answers: tuple  # of Answer; empty for an unanswerable v2.0 question
    is_impossible: bool
    squad_v2: bool  # the file is SQuAD v2.0: unanswerable questions exist and are scored as such
    title: str
    source: str  # the file it came from, for messages


def _short(text, limit=60):
    return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def read_squad(path):
    """The questions of a SQuAD v1.1/v2.0 JSON file, in file order, as SquadExamples (UserError on bad input)."""
    path = Path(path)
    if not path.is_file():
        what = "not a file" if path.exists() else "no such file"
        raise UserError(f"{path}: {what}; pass a SQuAD JSON file (train-v1.1.json, dev-v2.0.json, ...)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); pass a SQuAD JSON file") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; pass a SQuAD JSON file with a top-level \"data\" list")
    try:
        dataset = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                        f"pass a SQuAD JSON file") from None
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise UserError(f"{path}: no top-level \"data\" list; a SQuAD file is "
                        f"{{\"version\": ..., \"data\": [{{\"title\": ..., \"paragraphs\": [...]}}]}}")
    questions, seen = [], set()
    for a, article in enumerate(dataset["data"]):
        title = str(article.get("title", f"#{a}")) if isinstance(article, dict) else f"#{a}"
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"{path}: article {title!r} has no \"paragraphs\" list; give each article one")
        for p, paragraph in enumerate(paragraphs):
            where = f"{path}: article {title!r}, paragraph {p}"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                raise UserError(f"{where} has no \"context\" string; give each paragraph its text")
            if not isinstance(paragraph.get("qas"), list):
                raise UserError(f"{where} has no \"qas\" list; give each paragraph its questions")
            context = paragraph["context"]
            for question in paragraph["qas"]:
                questions.append(_read_question(question, context, title, where, path, seen))
    if not questions:
        raise UserError(f"{path}: no questions in the file; each paragraph lists its questions under \"qas\"")
    # v2.0 from the data: its version field, or any question that says whether it is impossible
    squad_v2 = str(dataset.get("version", "")).lstrip("v").startswith("2") or any(q[-1] for q in questions)
    return [SquadExample(qid, question, context, answers, is_impossible, squad_v2, title, str(path))
            for qid, question, context, answers, is_impossible, title, _ in questions]


def _read_question(question, context, title, where, path, seen):
    """(id, question, context, answers, is_impossible, title, has an is_impossible key) of one question."""
    qid = question.get("id") if isinstance(question, dict) else None
    if not isinstance(qid, str) or not qid:
        raise UserError(f"{where}: a question has no \"id\" string; give every question a unique id")
    if not isinstance(question.get("question"), str):
        raise UserError(f"{path}: question {qid} (article {title!r}) has no \"question\" string; add its text")
    if qid in seen:
        raise UserError(f"{path}: question id {qid} (article {title!r}) appears twice; ids must be unique")
    seen.add(qid)
    raw_answers = question.get("answers", [])
    if not isinstance(raw_answers, list):
        raise UserError(f"{path}: question {qid} (article {title!r}): \"answers\" is not a list")
    answers = []
    for raw in raw_answers:
        text = raw.get("text") if isinstance(raw, dict) else None
        start = raw.get("answer_start") if isinstance(raw, dict) else None
        if not isinstance(text, str):
            raise UserError(f"{path}: question {qid} (article {title!r}): an answer has no \"text\" string")
        if not isinstance(start, int) or isinstance(start, bool):
            raise UserError(f"{path}: question {qid} (article {title!r}): answer_start {start!r} is not an "
                            f"integer; give the character offset of the answer in the context")
        found = context[start:start + len(text)] if start >= 0 else ""
        if found != text:
            raise UserError(f"{path}: question {qid} (article {title!r}): the answer {_short(text)} is not at "
                            f"answer_start {start} (the context has {_short(found)} there); fix answer_start "
                            f"or the answer text")
        answers.append(Answer(text, start))
    return (qid, question["question"], context, tuple(answers), bool(question.get("is_impossible", False)), title,
            "is_impossible" in question)


class SquadPredictions(dict):
    """{question id: answer text} (the official predictions.json), carrying the n-best lists and, for
    v2.0, each question's null odds (null score minus best span score: the official --na-prob-file)."""

    def __init__(self, answers, nbest, null_odds=None):
        super().__init__(answers)
        self.nbest = nbest
        self.null_odds = null_odds


class SquadTask:
    """Extractive QA on SQuAD v1.1/v2.0; the contract of a task is in finetune/tasks.py."""

    name = "squad"
    head = "span"
    hf_architecture = "BertForQuestionAnswering"  # the task; interop/task_hf.py picks the backbone's class
    predictions_file = "predictions.json"
    target_keys = ("start_positions", "end_positions")
    labels = None

    def __init__(self, tokenizer, max_seq_len=384, *, doc_stride=128, max_query_len=64, max_answer_len=30,
                 n_best=20, null_threshold=0.0):
        if max_seq_len - max_query_len - 3 < 1:
            raise UserError(f"--max-seq-len {max_seq_len} leaves no room for the context after a question of "
                            f"--max-query-len {max_query_len} and 3 special tokens; "
                            f"raise the first or lower the second")
        for flag, value in (("--doc-stride", doc_stride), ("--max-query-len", max_query_len),
                            ("--max-answer-len", max_answer_len), ("--n-best", n_best)):
            if value < 1:
                raise UserError(f"{flag} {value} must be at least 1")
        self.tokenizer = tokenizer
        self.max_seq_len = max_seq_len
        self.doc_stride = doc_stride
        self.max_query_len = max_query_len
        self.max_answer_len = max_answer_len
        self.n_best = n_best
        self.null_threshold = null_threshold
        meta = tokenizer_meta(tokenizer)
        self.cls_id, self.sep_id, self.pad_id = meta["cls_id"], meta["sep_id"], meta["pad_id"]

    def read(self, path):
        """The questions of a SQuAD JSON file (see read_squad)."""
        return read_squad(path)

    def features(self, examples, train):
        """One row per window (see the module docstring). Model inputs input_ids (pad_id), token_type_ids,
        attention_mask: int64 (N, max_seq_len); with train, start_positions / end_positions int64 (N,): the
        answer's tokens in the window, 0 ([CLS]) where it is not wholly inside or there is none. For decoding:
        example_index int64 (N,) and offsets int32 (N, max_seq_len, 2), each context token's [start, end)
        characters in its context, -1 elsewhere."""
        windows = _Windows(self, examples)
        if train:
            windows.add_targets(examples)
        return windows.arrays

    def evaluate(self, examples, features, logits):
        """(metrics, SquadPredictions) from the model's (N, max_seq_len, 2) start/end logits (see squad_eval)."""
        predictions = decode(examples, features, logits, self.n_best, self.max_answer_len, self.null_threshold)
        if predictions.null_odds is None:
            metrics = squad_eval.evaluate(examples, predictions)
        else:  # v2.0: score each question's best span against the null odds, so the threshold can be searched
            best_spans = {qid: next((e["text"] for e in entries if e["text"]), "")
                          for qid, entries in predictions.nbest.items()}
            metrics = squad_eval.evaluate(examples, best_spans, predictions.null_odds, self.null_threshold)
        return metrics, predictions

    def write_predictions(self, predictions, path):
        """predictions.json ({id: text}, the official format) at `path`; beside it nbest_predictions.json and,
        for v2.0, null_odds.json (the official script's --na-prob-file). Each written whole, then renamed."""
        path = Path(path)
        _write_json(dict(predictions), path)
        if getattr(predictions, "nbest", None) is not None:
            _write_json(predictions.nbest, path.with_name("nbest_predictions.json"))
        if getattr(predictions, "null_odds", None) is not None:
            _write_json(predictions.null_odds, path.with_name("null_odds.json"))


def _write_json(value, path):
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=2)
    os.replace(tmp, path)


class _Windows:
    """Builds the feature arrays: tokenizes, lays out each example's windows, places the answers."""

    def __init__(self, task, examples):
        self.task = task
        tok = task.tokenizer
        questions = tok.encode_batch([ex.question for ex in examples], add_special_tokens=False)
        context_of = {}  # context string -> its index in `contexts` (a paragraph's questions share one)
        for ex in examples:
            context_of.setdefault(ex.context, len(context_of))
        contexts = list(context_of)
        encoded = tok.encode_batch(contexts, add_special_tokens=False)
        self.context_tokens = [(np.array(e.ids, dtype=np.int64), _trimmed_offsets(c, e.offsets))
                               for c, e in zip(contexts, encoded)]
        self.context_of_example = [context_of[ex.context] for ex in examples]
        self.question_ids = [q.ids[:task.max_query_len] for q in questions]
        self._layout()

    def _layout(self):
        task, T = self.task, self.task.max_seq_len
        # (example, first context token, number of context tokens, row position of the first context token)
        plan = []
        for i, q in enumerate(self.question_ids):
            n = len(self.context_tokens[self.context_of_example[i]][0])
            budget = T - len(q) - 3
            for start in window_starts(n, budget, task.doc_stride):
                plan.append((i, start, min(budget, n - start), len(q) + 2))
        N = len(plan)
        input_ids = np.full((N, T), task.pad_id, dtype=np.int64)
        token_type_ids = np.zeros((N, T), dtype=np.int64)
        attention_mask = np.zeros((N, T), dtype=np.int64)
        offsets = np.full((N, T, 2), -1, dtype=np.int32)
        for row, (i, start, length, at) in enumerate(plan):
            ids, char_offsets = self.context_tokens[self.context_of_example[i]]
            end = at + length
            input_ids[row, 0] = task.cls_id
            input_ids[row, 1:at - 1] = self.question_ids[i]
            input_ids[row, at - 1] = task.sep_id
            input_ids[row, at:end] = ids[start:start + length]
            input_ids[row, end] = task.sep_id
            token_type_ids[row, at:end + 1] = 1
            attention_mask[row, :end + 1] = 1
            offsets[row, at:end] = char_offsets[start:start + length]
        self.plan = np.array(plan, dtype=np.int64).reshape(N, 4)
        self.arrays = {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                       "example_index": self.plan[:, 0].copy(), "offsets": offsets}

    def add_targets(self, examples):
        """start_positions / end_positions from each example's first answer (0 where absent or impossible)."""
        first_token = np.full(len(examples), -1, dtype=np.int64)  # the answer's tokens in its context; -1: none
        last_token = np.full(len(examples), -1, dtype=np.int64)
        for i, ex in enumerate(examples):
            if ex.is_impossible:
                continue
            if not ex.answers:
                raise UserError(f"{ex.source}: training question {ex.id} (article {ex.title!r}) has no answer and "
                                f"is not marked \"is_impossible\": true; add its answer or mark it")
            answer = ex.answers[0]
            char_offsets = self.context_tokens[self.context_of_example[i]][1]
            first, last = answer_tokens(char_offsets, answer.start, answer.start + len(answer.text))
            if first <= last:  # else the answer covers no token (whitespace only): train on [CLS]
                first_token[i], last_token[i] = first, last
        i, start, length, at = self.plan.T
        inside = (first_token[i] >= start) & (last_token[i] < start + length) & (first_token[i] >= 0)
        self.arrays["start_positions"] = np.where(inside, first_token[i] - start + at, 0)
        self.arrays["end_positions"] = np.where(inside, last_token[i] - start + at, 0)


def window_starts(n_tokens, budget, doc_stride):
    """First context token of each window of at most `budget` tokens: 0, stride, 2 stride, ... until a window
    reaches the end (run_squad's rule; a stride longer than the window steps one window)."""
    step = min(budget, doc_stride)
    if n_tokens <= budget:
        return [0]
    return list(range(0, n_tokens - budget, step)) + [((n_tokens - budget + step - 1) // step) * step]


def answer_tokens(char_offsets, char_start, char_end):
    """(first, last) token index covering characters [char_start, char_end): the first token ending after
    the start, the last starting before the end. first > last when no token lies inside."""
    first = int(np.searchsorted(char_offsets[:, 1], char_start, side="right"))
    last = int(np.searchsorted(char_offsets[:, 0], char_end, side="left")) - 1
    return first, last


_WHITESPACE = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)


def _trimmed_offsets(context, offsets):
    """(n, 2) int32 character offsets with leading whitespace moved out of each token: a byte-level BPE
    token such as "Ġcat" covers the space before the word, and an answer must not start with it. A token of
    whitespace only ends up empty (start == end)."""
    offsets = np.array(offsets, dtype=np.int32).reshape(-1, 2)
    if len(offsets) == 0:
        return offsets
    codes = np.append(np.frombuffer(context.encode("utf-32-le"), dtype=np.uint32), 0)
    while True:  # one step per leading whitespace character (BPE tokens carry at most one, runs aside)
        movable = (offsets[:, 0] < offsets[:, 1]) & np.isin(codes[offsets[:, 0]], _WHITESPACE)
        if not movable.any():
            return offsets
        offsets[movable, 0] += 1


ROWS_AT_ONCE = 4096  # windows decoded together: bounds the (rows, n_best, n_best) candidate arrays


def _span_candidates(logits, offsets, n_best, max_answer_len, first_row):
    """(row, start, end, score) of every allowed span among each window's n_best starts and ends."""
    in_context = offsets[:, :, 0] >= 0
    start_logits = np.where(in_context, logits[:, :, 0], -np.inf)  # (B, T)
    end_logits = np.where(in_context, logits[:, :, 1], -np.inf)
    k = min(n_best, logits.shape[1])
    starts = np.argpartition(-start_logits, k - 1, axis=1)[:, :k]  # (B, k): each window's k best starts
    ends = np.argpartition(-end_logits, k - 1, axis=1)[:, :k]
    rows = np.arange(len(logits))[:, None]
    score = start_logits[rows, starts][:, :, None] + end_logits[rows, ends][:, None, :]  # (B, k, k)
    length = ends[:, None, :] - starts[:, :, None] + 1
    row, si, ei = np.nonzero(np.isfinite(score) & (length >= 1) & (length <= max_answer_len))
    return row + first_row, starts[row, si], ends[row, ei], score[row, si, ei]


def decode(examples, features, logits, n_best=20, max_answer_len=30, null_threshold=0.0):
    """SquadPredictions from logits (N, T, 2) aligned with `features` rows (see the module docstring).

    Each question's n-best list holds {"text", "start_logit", "end_logit", "score", "probability"} entries,
    best first, distinct texts; for v2.0 it includes the null answer "" with the null score.
    """
    logits = np.asarray(logits, dtype=np.float32)
    offsets, example_index = features["offsets"], features["example_index"]
    if logits.shape[:2] != offsets.shape[:2] or len(example_index) and example_index.max() >= len(examples):
        raise ValueError(f"logits {logits.shape} and features ({offsets.shape[0]} rows of {offsets.shape[1]}) "
                         f"for {len(examples)} examples do not belong together")
    chunks = [_span_candidates(logits[r:r + ROWS_AT_ONCE], offsets[r:r + ROWS_AT_ONCE], n_best, max_answer_len, r)
              for r in range(0, len(logits), ROWS_AT_ONCE)]
    row, start, end, score = (np.concatenate(parts) for parts in zip(*chunks)) if chunks else [np.zeros(0, int)] * 4
    owner = example_index[row]
    order = np.lexsort((-score, owner))  # by example, best first
    row, start, end, score, owner = (a[order] for a in (row, start, end, score, owner))
    first_of_example = np.searchsorted(owner, np.arange(len(examples) + 1))

    window_null = logits[:, 0, 0] + logits[:, 0, 1]  # start[CLS] + end[CLS]
    by_null = np.lexsort((window_null, example_index))
    null_row = np.zeros(len(examples), dtype=np.int64)  # each example's window of the smallest null score
    owners, first = np.unique(example_index[by_null], return_index=True)
    null_row[owners] = by_null[first]
    squad_v2 = any(ex.squad_v2 for ex in examples)
    answers, nbest, null_odds = {}, {}, {} if squad_v2 else None
    for i, ex in enumerate(examples):
        entries, texts = [], set()
        for c in range(first_of_example[i], first_of_example[i + 1]):
            r, s, e = row[c], start[c], end[c]
            text = ex.context[offsets[r, s, 0]:offsets[r, e, 1]]
            if text in texts:
                continue
            texts.add(text)
            entries.append({"text": text, "start_logit": float(logits[r, s, 0]), "end_logit": float(logits[r, e, 1]),
                            "score": float(score[c])})
            if len(entries) == n_best:
                break
        best = entries[0] if entries else None
        answers[ex.id] = best["text"] if best else ""
        if squad_v2:
            r = null_row[i]
            null = {"text": "", "start_logit": float(logits[r, 0, 0]), "end_logit": float(logits[r, 0, 1]),
                    "score": float(window_null[r])}
            null_odds[ex.id] = odds = null["score"] - best["score"] if best else float("inf")
            if odds > null_threshold:
                answers[ex.id] = ""
            entries = sorted(entries + [null], key=lambda entry: -entry["score"])[:max(n_best, 1)]
        scores = np.array([entry["score"] for entry in entries])
        probabilities = np.exp(scores - scores.max()) if len(scores) else scores
        for entry, p in zip(entries, probabilities / probabilities.sum() if len(scores) else []):
            entry["probability"] = float(p)
        nbest[ex.id] = entries
    return SquadPredictions(answers, nbest, null_odds)
