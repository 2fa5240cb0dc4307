"""The ceilings beside the floor for the downstream task: majority class and bag of words.

A body's downstream accuracy means little alone: the untrained body is the floor, and these
two rows say what the task gives without any language model. The bag of words is a
character n-gram multinomial naive Bayes (scikit-learn, the field's maintained
implementation: no hand-written classifier), trained on exactly the train rows the bodies
are fine-tuned on, its one setting (the smoothing `alpha`) chosen on the same validation
rows the bodies' grids are chosen on, scored on the same test rows. Character n-grams
(within word boundaries) read every script of the task, CJK included, without a tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

#: n-gram lengths of the bag of words (characters, within word boundaries)
NGRAMS = (1, 3)
#: the smoothing grid, chosen on validation (the same rule as the bodies' grids)
ALPHAS = (0.01, 0.1, 1.0)


def majority(train_labels: Sequence[str], test_labels: Sequence[str]) -> dict:
    """Always predict the most frequent training label (ties: the first in sorted order)."""
    labels = sorted(set(train_labels))
    top = max(labels, key=lambda c: (list(train_labels).count(c), -labels.index(c)))
    correct = [int(g == top) for g in test_labels]
    return {"label": top, "accuracy": sum(correct) / len(correct), "correct": correct}


def bag_of_words(train: tuple[Sequence[str], Sequence[str]],
                 val: tuple[Sequence[str], Sequence[str]],
                 test: tuple[Sequence[str], Sequence[str]],
                 alphas: Sequence[float] = ALPHAS, ngrams: tuple[int, int] = NGRAMS) -> dict:
    """Character n-gram naive Bayes: fit on `train` (texts, labels) per alpha, choose alpha by
    validation accuracy (ties: the smaller alpha), score the chosen model on `test` only."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # BLAS threads next to torch's spinning ones are far slower
        return _bag_of_words(train, val, test, alphas, ngrams)


def _bag_of_words(train, val, test, alphas, ngrams) -> dict:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    vec = CountVectorizer(analyzer="char_wb", ngram_range=ngrams, lowercase=True)
    x_train = vec.fit_transform(list(train[0]))
    grid = {}
    for a in alphas:
        clf = MultinomialNB(alpha=a).fit(x_train, list(train[1]))
        pred = clf.predict(vec.transform(list(val[0])))
        grid[a] = sum(p == g for p, g in zip(pred, val[1])) / len(val[1])
    best = max(alphas, key=lambda a: (grid[a], -a))
    clf = MultinomialNB(alpha=best).fit(x_train, list(train[1]))
    pred = clf.predict(vec.transform(list(test[0])))
    correct = [int(p == g) for p, g in zip(pred, test[1])]
    return {"alpha": best, "val_accuracy": {str(a): v for a, v in grid.items()},
            "accuracy": sum(correct) / len(correct), "correct": correct,
            "ngrams": list(ngrams)}
