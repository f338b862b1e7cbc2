"""The official SQuAD metrics on cases worked out by hand (the arithmetic is in the comments)."""

import pytest

from spanbert_ds.finetune.squad import Answer, SquadExample
from spanbert_ds.finetune.squad_eval import evaluate, exact_match, f1, normalize_answer


def question(qid, *golds, squad_v2=False):
    answers = tuple(Answer(text, 0) for text in golds)
    return SquadExample(qid, "?", "", answers, not answers, squad_v2, "title", "test.json")


def test_normalize_lowercases_drops_punctuation_then_articles_then_collapses_whitespace():
    assert normalize_answer("Hello,   World!") == "hello world"
    assert normalize_answer("  The Eiffel\tTower \n") == "eiffel tower"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theater and anthem") == "theater and anthem"  # articles only as whole words
    # punctuation goes first: "the-end" becomes the word "theend", which holds no article
    assert normalize_answer("The-End") == "theend"
    assert normalize_answer("a.m.") == "am"


def test_exact_match_compares_normalised_strings():
    assert exact_match("The Eiffel Tower.", "eiffel tower") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0


def test_f1_is_the_token_overlap_of_the_normalised_strings():
    # "cat sat" vs "cat sat down": overlap 2, precision 2/2 = 1, recall 2/3, F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    assert f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # overlap counts repeats as a multiset: "cat cat cat" vs "cat cat dog" share cat x2;
    # precision 2/3, recall 2/3, F1 2/3
    assert f1("the cat cat cat", "cat cat dog") == pytest.approx(2 / 3)
    assert f1("dog", "cat") == 0.0


def test_empty_strings_follow_each_version():
    # v2.0: both empty is a match, one side empty is not
    assert f1("", "") == 1.0 and f1("", "the") == 1.0  # "the" normalises to nothing
    assert f1("cat", "") == 0.0 and f1("", "cat") == 0.0
    # v1.1: no overlap scores 0, empty or not
    assert f1("", "", squad_v2=False) == 0.0
    assert exact_match("", "") == 1.0


def test_question_scores_the_best_over_its_golds_and_a_missing_prediction_scores_zero():
    examples = [question("q1", "dog", "the cat", "cat sat down"),
                # "big red dog" vs "red dog runs": overlap 2, P 2/3, R 2/3, F1 2/3;
                # vs "small dog": overlap 1, P 1/3, R 1/2, F1 2*(1/6)/(5/6) = 0.4; the max is 2/3
                question("q2", "red dog runs", "small dog"),
                question("q3", "anything")]
    metrics = evaluate(examples, {"q1": "cat", "q2": "big red dog"})  # q3 unanswered: 0
    assert metrics["count"] == 3
    assert metrics["exact_match"] == pytest.approx(100 * 1 / 3)
    assert metrics["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    assert "HasAns_f1" not in metrics and "best_f1" not in metrics  # v1.1 has neither


def v2_set():
    # id, golds, prediction (best span), null odds
    rows = [("q1", ["Denver Broncos"], "Denver Broncos", -2.0),   # right: EM 1, F1 1
            ("q3", ["cat sat down"], "the cat sat", -1.0),        # EM 0, F1 0.8 (see the F1 test)
            ("q2", [], "x", 0.5),                                 # unanswerable, answered "x"
            ("q4", [], "", 3.0)]                                  # unanswerable, best span empty
    examples = [question(qid, *golds, squad_v2=True) for qid, golds, _, _ in rows]
    return examples, {qid: p for qid, _, p, _ in rows}, {qid: o for qid, _, _, o in rows}


def test_v2_threshold_answers_empty_above_it_and_splits_has_and_no_answer():
    examples, spans, odds = v2_set()
    metrics = evaluate(examples, spans, odds, threshold=0.0)
    # odds > 0: q2 and q4 answer "" (right: 1 each); q1 scores 1/1, q3 0/0.8
    assert metrics["exact_match"] == pytest.approx(100 * 3 / 4)
    assert metrics["f1"] == pytest.approx(100 * (1 + 0.8 + 1 + 1) / 4)
    assert metrics["HasAns_exact_match"] == pytest.approx(50) and metrics["HasAns_f1"] == pytest.approx(90)
    assert metrics["NoAns_exact_match"] == 100 and metrics["NoAns_count"] == 2 and metrics["HasAns_count"] == 2


def test_v2_best_threshold_search():
    examples, spans, odds = v2_set()
    metrics = evaluate(examples, spans, odds)
    # All answered "": 2 right (q2, q4). Switching on in order of odds:
    #   exact: q1 (-2) +1 -> 3, q3 (-1) +0 -> 3, q2 (0.5) -1 -> 2, q4 (3) +0 -> 2: best 3/4 at -2
    #   f1:    q1 (-2) +1 -> 3, q3 (-1) +0.8 -> 3.8, q2 -1 -> 2.8, q4 +0 -> 2.8: best 3.8/4 at -1
    assert metrics["best_exact"] == pytest.approx(75) and metrics["best_exact_thresh"] == -2.0
    assert metrics["best_f1"] == pytest.approx(95) and metrics["best_f1_thresh"] == -1.0
    # the threshold found reproduces its score
    assert evaluate(examples, spans, odds, threshold=-1.0)["f1"] == pytest.approx(95)


def test_v2_questions_with_equal_odds_switch_together():
    examples = [question("a", "yes", squad_v2=True), question("b", squad_v2=True)]
    # Both odds 1: answering switches on both, +1 for a and -1 for b, no better than all "" (1/2).
    metrics = evaluate(examples, {"a": "yes", "b": "x"}, {"a": 1.0, "b": 1.0})
    assert metrics["best_exact"] == 50.0
    assert metrics["best_exact_thresh"] < 1.0
    assert evaluate(examples, {"a": "yes", "b": "x"}, {"a": 1.0, "b": 1.0},
                    threshold=metrics["best_exact_thresh"])["exact_match"] == 50.0


def test_v2_drops_golds_that_normalise_to_nothing():
    # the only gold "the" is dropped, so the question is scored against "": an empty prediction is right
    examples = [question("q", "the", squad_v2=True)]
    assert evaluate(examples, {"q": ""})["exact_match"] == 100.0
    assert evaluate(examples, {"q": "the"})["f1"] == 100.0  # "the" normalises to "" too
