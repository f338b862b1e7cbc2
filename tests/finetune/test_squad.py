"""SQuAD reading, windowing and decoding, with the real uncased BERT vocabulary (and a small byte-level BPE)."""

import json

import numpy as np
import pytest

from spanbert_ds.data.tokenizer import load_tokenizer, train_tokenizer
from spanbert_ds.errors import UserError
from spanbert_ds.finetune.squad import SquadTask, window_starts

SEQ, STRIDE, QUERY = 48, 8, 16


@pytest.fixture(scope="module")
def tok(bert_vocab_file):
    return load_tokenizer(bert_vocab_file)


@pytest.fixture(scope="module")
def numbers(tok):
    """120 numbers that are one token each, so that token counts are known."""
    words = [str(n) for n in range(100, 1000) if len(tok.encode(str(n), add_special_tokens=False).ids) == 1]
    return words[:120]


def squad_file(tmp_path, paragraphs, version="1.1", title="Numbers"):
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"version": version, "data": [{"title": title, "paragraphs": paragraphs}]}))
    return path


def qa(qid, context, answer=None, question="which numbers?", impossible=None):
    item = {"id": qid, "question": question,
            "answers": [] if answer is None else [{"text": answer, "answer_start": context.index(answer)}]}
    if impossible is not None:
        item["is_impossible"] = impossible
    return item


def numbers_task(tok, numbers, answer_tokens, **options):
    """A task, its examples and features for one question about a 120-token context whose answer is
    numbers[answer_tokens[0]:answer_tokens[1]]."""
    context = " ".join(numbers)
    answer = " ".join(numbers[slice(*answer_tokens)])
    task = SquadTask(tok, SEQ, doc_stride=STRIDE, max_query_len=QUERY, **options)
    return task, context, answer


def read_one(task, tmp_path, context, answer, **qa_options):
    return task.read(squad_file(tmp_path, [{"context": context, "qas": [qa("q1", context, answer, **qa_options)]}]))


def test_long_context_is_cut_into_windows_stride_apart_that_reach_its_end(tok, numbers, tmp_path):
    task, context, answer = numbers_task(tok, numbers, (50, 53))
    examples = read_one(task, tmp_path, context, answer)
    f = task.features(examples, train=True)
    n_question = len(tok.encode("which numbers?", add_special_tokens=False).ids)
    budget = SEQ - n_question - 3
    # 120 tokens in windows of `budget`, one every 8 tokens: starts 0, 8, ..., the first reaching 120
    expected = -(-(120 - budget) // STRIDE) + 1
    assert len(f["input_ids"]) == expected == len(window_starts(120, budget, STRIDE))
    assert all(v.shape[0] == expected for v in f.values())
    assert f["input_ids"].dtype == np.int64 and f["input_ids"].shape == (expected, SEQ)
    first_context = n_question + 2
    for row in range(expected):
        ids, types, mask = f["input_ids"][row], f["token_type_ids"][row], f["attention_mask"][row]
        length = int(mask.sum())
        sep = tok.token_to_id("[SEP]")
        assert ids[0] == tok.token_to_id("[CLS]") and ids[first_context - 1] == ids[length - 1] == sep
        assert (types[:first_context] == 0).all() and (types[first_context:length] == 1).all()
        assert (types[length:] == 0).all()
        assert (ids[length:] == tok.token_to_id("[PAD]")).all()
        words = [context[s:e] for s, e in f["offsets"][row][first_context:length - 1]]
        # window `row` holds tokens row*8 .. row*8 + budget (the last one fewer): consecutive ones overlap
        assert words == numbers[row * STRIDE:row * STRIDE + budget]
        assert (f["offsets"][row][:first_context] == -1).all() and (f["offsets"][row][length - 1:] == -1).all()
    assert words[-1] == numbers[-1]  # the last window reaches the end


def test_answer_positions_round_trip_through_the_offsets_and_a_cut_answer_points_at_cls(tok, numbers, tmp_path):
    n_question = len(tok.encode("which numbers?", add_special_tokens=False).ids)
    budget = SEQ - n_question - 3
    # the answer's 4 tokens start 2 before the end of window 0: only partly inside it, wholly inside window 1
    first = budget - 2
    task, context, answer = numbers_task(tok, numbers, (first, first + 4))
    f = task.features(read_one(task, tmp_path, context, answer), train=True)
    starts, ends = f["start_positions"], f["end_positions"]
    assert starts.dtype == np.int64 and starts[0] == ends[0] == 0
    holding = np.nonzero(starts)[0]
    assert holding[0] == 1
    for row in holding:
        offsets = f["offsets"][row]
        assert context[offsets[starts[row], 0]:offsets[ends[row], 1]] == answer
        assert ends[row] - starts[row] == 3
    # every window that covers all four tokens holds the answer, the others point at [CLS]
    covers = [row * STRIDE <= first and first + 4 <= row * STRIDE + budget for row in range(len(starts))]
    assert list(starts > 0) == covers


def test_long_questions_are_cut_to_max_query_len(tok, numbers, tmp_path):
    task, context, answer = numbers_task(tok, numbers, (3, 4))
    long_question = " ".join(numbers[:40])
    f = task.features(read_one(task, tmp_path, context, answer, question=long_question), train=False)
    assert (f["token_type_ids"][0][:QUERY + 2] == 0).all() and f["token_type_ids"][0][QUERY + 2] == 1
    assert "start_positions" not in f


def test_byte_level_bpe_answers_do_not_start_with_the_space_before_them(tmp_path):
    text = "the quick brown fox jumps over the lazy dog near the river bank"
    bpe = train_tokenizer("bpe", [text] * 20, 300)
    task = SquadTask(bpe, 32, doc_stride=4, max_query_len=8)
    context = f"Once  {text}, twice."
    examples = task.read(squad_file(tmp_path, [{"context": context, "qas": [qa("q1", context, "lazy dog")]}]))
    f = task.features(examples, train=True)
    assert (f["input_ids"][:, 0] == bpe.token_to_id("<s>")).all()
    rows = np.nonzero(f["start_positions"])[0]
    assert len(rows) > 0
    for row in rows:
        s, e = f["start_positions"][row], f["end_positions"][row]
        assert context[f["offsets"][row][s, 0]:f["offsets"][row][e, 1]] == "lazy dog"


def decode_setup(tok, numbers, tmp_path, answer=None, version="1.1"):
    task, context, _ = numbers_task(tok, numbers, (0, 1), max_answer_len=5, n_best=5)
    if version == "1.1":
        answer = numbers[0]
    item = qa("q1", context, answer, impossible=None if version == "1.1" else answer is None)
    examples = task.read(squad_file(tmp_path, [{"context": context, "qas": [item]}], version=version))
    f = task.features(examples, train=False)
    logits = np.zeros(f["input_ids"].shape + (2,), dtype=np.float32)
    logits[f["attention_mask"] == 0] = 1e4  # padding: arbitrary, ignored
    return task, examples, f, logits, context


def span_text(f, context, row, start, end):
    return context[f["offsets"][row][start, 0]:f["offsets"][row][end, 1]]


def test_decoding_picks_the_best_span_of_any_window(tok, numbers, tmp_path):
    task, examples, f, logits, context = decode_setup(tok, numbers, tmp_path)
    at = int(np.argmax(f["token_type_ids"][1]))  # window 1's first context token
    logits[1, at + 3, 0] = logits[1, at + 5, 1] = 5.0
    logits[0, at + 1, 0] = logits[0, at + 1, 1] = 4.0  # a worse span in window 0
    metrics, predictions = task.evaluate(examples, f, logits)
    assert predictions["q1"] == span_text(f, context, 1, at + 3, at + 5) == " ".join(numbers[STRIDE + 3:STRIDE + 6])
    assert predictions.nbest["q1"][0]["score"] == 10.0 and len(predictions.nbest["q1"]) == 5
    assert sum(entry["probability"] for entry in predictions.nbest["q1"]) == pytest.approx(1.0)
    assert metrics["count"] == 1 and predictions.null_odds is None


def test_decoding_skips_spans_too_long_or_reversed_and_the_question(tok, numbers, tmp_path):
    task, examples, f, logits, context = decode_setup(tok, numbers, tmp_path)
    at = int(np.argmax(f["token_type_ids"][0]))
    logits[0, at + 10, 0] = logits[0, at + 15, 1] = 9.0  # 6 tokens > max_answer_len 5
    logits[0, at + 20, 0] = logits[0, at + 19, 1] = 8.0  # end before start
    logits[0, 1, 0] = logits[0, 2, 1] = 50.0  # in the question
    logits[0, 0, :] = 50.0  # [CLS]: v1.1 has no null answer
    logits[0, at + 2, 0] = logits[0, at + 6, 1] = 7.0  # 5 tokens: allowed
    _, predictions = task.evaluate(examples, f, logits)
    assert predictions["q1"] == span_text(f, context, 0, at + 2, at + 6) == " ".join(numbers[2:7])


def test_v2_answers_empty_when_the_null_score_wins(tok, numbers, tmp_path):
    task, examples, f, logits, context = decode_setup(tok, numbers, tmp_path, version="v2.0")
    assert examples[0].squad_v2 and examples[0].is_impossible
    at = int(np.argmax(f["token_type_ids"][0]))
    logits[0, at + 2, 0] = logits[0, at + 3, 1] = 3.0  # span score 6
    logits[:, 0, :] = 4.0  # null 8 in every window
    logits[2, 0, :] = 3.5  # ... but the null score is the smallest over windows: 7
    metrics, predictions = task.evaluate(examples, f, logits)
    assert predictions["q1"] == "" and predictions.null_odds["q1"] == pytest.approx(1.0)
    assert metrics["exact_match"] == 100.0 and metrics["NoAns_count"] == 1
    assert predictions.nbest["q1"][0]["text"] == "" and predictions.nbest["q1"][1]["text"] == " ".join(numbers[2:4])
    logits[2, 0, :] = 2.0  # null 4 < 6: the span wins
    metrics, predictions = task.evaluate(examples, f, logits)
    assert predictions["q1"] == " ".join(numbers[2:4]) and metrics["exact_match"] == 0.0
    assert metrics["best_exact"] == 100.0  # any threshold above -2 answers ""


def test_write_predictions_writes_the_official_file_and_the_nbest(tok, numbers, tmp_path):
    task, examples, f, logits, context = decode_setup(tok, numbers, tmp_path, version="v2.0")
    _, predictions = task.evaluate(examples, f, logits)
    task.write_predictions(predictions, tmp_path / "predictions.json")
    assert json.loads((tmp_path / "predictions.json").read_text()) == dict(predictions)
    assert json.loads((tmp_path / "nbest_predictions.json").read_text())["q1"] == predictions.nbest["q1"]
    assert set(json.loads((tmp_path / "null_odds.json").read_text())) == {"q1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nbest_predictions.json", "null_odds.json",
                                                          "predictions.json", "squad.json"]


def test_v2_is_detected_from_is_impossible_keys(tok, tmp_path):
    context = "Paris is in France."
    task = SquadTask(tok, 128)
    plain = task.read(squad_file(tmp_path, [{"context": context, "qas": [qa("a", context, "Paris")]}], version="x"))
    assert not plain[0].squad_v2
    keyed = task.read(squad_file(tmp_path, [{"context": context, "qas": [qa("a", context, "Paris", impossible=False)]}],
                                 version="x"))
    assert keyed[0].squad_v2 and not keyed[0].is_impossible and keyed[0].answers[0].start == 0


def bad(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def paragraphs(*qas, context="Paris is in France."):
    return {"data": [{"title": "Geo", "paragraphs": [{"context": context, "qas": list(qas)}]}]}


def q(qid="q1", answers=({"text": "Paris", "answer_start": 0},), **extra):
    return {"id": qid, "question": "where?", "answers": list(answers), **extra}


BAD_INPUT = {
    "not JSON": ('{"data": [\n  ,\n]}', r"bad\.json: not JSON \(line 2"),
    "empty": ("  \n", r"bad\.json: the file is empty"),
    "no data": ({"version": "1.1"}, r"bad\.json: no top-level \"data\" list"),
    "no paragraphs": ({"data": [{"title": "Geo"}]}, r"article 'Geo' has no \"paragraphs\""),
    "no context": ({"data": [{"title": "Geo", "paragraphs": [{"qas": []}]}]},
                   r"article 'Geo', paragraph 0 has no \"context\""),
    "no qas": ({"data": [{"title": "Geo", "paragraphs": [{"context": "x"}]}]},
               r"article 'Geo', paragraph 0 has no \"qas\""),
    "no id": (paragraphs({"question": "where?", "answers": []}),
              r"article 'Geo', paragraph 0: a question has no \"id\""),
    "no question": (paragraphs({"id": "q7", "answers": []}), r"question q7 \(article 'Geo'\) has no \"question\""),
    "duplicate id": (paragraphs(q("q1"), q("q1")), r"question id q1 \(article 'Geo'\) appears twice"),
    "answer_start not int": (paragraphs(q(answers=[{"text": "Paris", "answer_start": "0"}])),
                             r"question q1 .*answer_start '0' is not an integer"),
    "wrong offset": (paragraphs(q(answers=[{"text": "France", "answer_start": 3}])),
                     r"question q1 .*the answer 'France' is not at answer_start 3 \(the context has 'is is ' there\)"),
    "no questions": ({"data": []}, r"bad\.json: no questions"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_a_user_error_naming_the_file_and_question(tok, tmp_path, case):
    content, message = BAD_INPUT[case]
    with pytest.raises(UserError, match=message) as error:
        SquadTask(tok, 128).read(bad(tmp_path, content))
    assert str(tmp_path / "bad.json") in str(error.value) and "\n" not in str(error.value)


def test_a_missing_file_is_a_user_error(tok, tmp_path):
    with pytest.raises(UserError, match=r"missing\.json: no such file"):
        SquadTask(tok, 128).read(tmp_path / "missing.json")
    with pytest.raises(UserError, match=r": not a file; pass a SQuAD JSON file"):
        SquadTask(tok, 128).read(tmp_path)


def test_a_training_question_without_answer_must_be_impossible(tok, tmp_path):
    task = SquadTask(tok, 128)
    examples = task.read(bad(tmp_path, paragraphs(q("q1"), q("q2", answers=()))))
    task.features(examples, train=False)  # evaluation files may hold unanswered questions
    message = r"bad\.json: training question q2 \(article 'Geo'\) has no answer and is not marked"
    with pytest.raises(UserError, match=message):
        task.features(examples, train=True)
    examples = task.read(bad(tmp_path, paragraphs(q("q1"), q("q2", answers=(), is_impossible=True))))
    f = task.features(examples, train=True)
    assert f["start_positions"][1] == f["end_positions"][1] == 0


def test_settings_that_leave_no_room_for_the_context_are_user_errors(tok):
    with pytest.raises(UserError, match="--max-seq-len 64 leaves no room"):
        SquadTask(tok, 64, max_query_len=61)
    with pytest.raises(UserError, match="--doc-stride 0 must be at least 1"):
        SquadTask(tok, 128, doc_stride=0)
