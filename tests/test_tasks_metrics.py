"""SQuAD-style exact match and F1 against hand-computed values."""

import pytest

from zoexp.metrics import exact_match, normalize_answer, qa_scores, token_f1


def test_normalisation_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The  Denver-Broncos, an NFL team! ") == "denverbroncos nfl team"


@pytest.mark.parametrize("pred, gold, expected", [
    ("The Cat!", "cat", 1.0),
    ("cat", "cats", 0.0),
    ("a   b", "B", 1.0),  # "a" is an article, "b" matches case-insensitively
])
def test_exact_match(pred, gold, expected):
    assert exact_match(pred, gold) == expected


@pytest.mark.parametrize("pred, gold, expected", [
    # pred -> "cat sat on mat" (4 tokens), gold -> "cat on mat" (3): P = 3/4, R = 1
    ("the cat sat on the mat", "a cat on a mat", 2 * 0.75 * 1 / 1.75),
    # repeated tokens count once per matching occurrence: overlap 2 of 3 each way
    ("x x y", "x y y", 2 / 3),
    ("blue", "light blue sky", 0.5),  # P = 1, R = 1/3
    ("red", "blue", 0.0),
    ("", "", 1.0),
    ("the", "answer", 0.0),  # normalises to empty: no match with a non-empty gold
])
def test_token_f1(pred, gold, expected):
    assert token_f1(pred, gold) == pytest.approx(expected)


def test_qa_scores_take_the_best_gold_answer_and_average():
    scores = qa_scores(["Denver Broncos", "blue"], [["Denver Broncos", "Broncos"], ["light blue sky", "red"]])
    assert scores == pytest.approx({"f1": (1.0 + 0.5) / 2, "exact_match": (1.0 + 0.0) / 2})


def test_qa_scores_rejects_misaligned_inputs():
    with pytest.raises(ValueError):
        qa_scores(["a"], [["a"], ["b"]])
