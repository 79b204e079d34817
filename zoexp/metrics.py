"""Answer-string metrics for generation tasks (SQuAD, DROP): exact match and token F1.

Both compare SQuAD-normalised strings (lower-cased, punctuation and the articles a / an / the
removed, whitespace collapsed) and take the best score over all gold answers, as the official
SQuAD v1.1 evaluation does. The MeZO paper reports this same F1 for DROP too (not DROP's own
numeracy-aware F1), so one implementation serves both.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall; two empty answers agree (1.0)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def best_over_answers(metric, prediction: str, answers: Sequence[str]) -> float:
    """The metric against the closest gold answer (questions often have several)."""
    return max((metric(prediction, gold) for gold in answers), default=0.0)


def qa_scores(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean F1 and exact match (fractions in [0, 1]) over a set of questions."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    n = max(len(answers), 1)
    return {
        "f1": sum(best_over_answers(token_f1, p, a) for p, a in zip(predictions, answers)) / n,
        "exact_match": sum(best_over_answers(exact_match, p, a) for p, a in zip(predictions, answers)) / n,
    }
