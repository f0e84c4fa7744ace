"""Utility: train on synthetic rows, test on real ones (TSTR), against train-real-test-real.

One scikit-learn HistGradientBoosting model (classifier for a categorical target, regressor
for a numerical or integer one; default hyper-parameters, `random_state=seed`) is trained
twice on the same features, every described column but the target: once on the synthetic
rows and once on as many real training rows (a seeded subsample, stratified on a categorical
target, when the real rows are more), so the ratio compares what the rows teach, not how many
there are: 500 real churn rows teach an AUC 0.06 below what 3,500 do (0.86 against 0.92,
mean of five seeded splits), so against all 3,500, 500 held-out real rows themselves scored a
utility ratio of 0.958; at equal size, 1.017.  (TabDDPM, Kotelnikov et
al. 2023, compares at equal size the other way: it samples as many synthetic rows as the real
training set has.)  Both are scored on the same real held-out rows.
Categorical features use the model's native categorical splits on integer codes fixed from
the real training rows (diffusion/tabular/metrics_inputs.py `category_codes`), so both models
read a category the same way; nulls are its missing values.  Rows whose target is null are
left out of training and testing.

Scores (higher is better for each):
- classification: AUC and F1 on the held-out rows.  Binary target: the positive class is the
  rarer class of the real training target (for churn: "yes"); AUC from its predicted
  probability, F1 of it with the predicted class (the most probable one).  More classes:
  AUC one-vs-rest, each class present in the held-out rows against the rest, averaged with
  equal weight (macro); F1 macro-averaged over the classes of the real training target.
  A class the training rows lack gets probability 0; a model trained on rows of one class
  predicts that class (AUC 0.5); classes the real training target lacks are dropped from the
  probabilities (a synthetic table of one unknown class scores AUC 0.5 and predicts the
  first class).
- regression: R^2 (1 - residual / total sum of squares on the held-out target; 1 is perfect,
  0 is predicting the held-out mean, negative is worse).

utility_ratio = primary score of the synthetic-trained model / that of the real-trained one
(AUC for classification, R^2 for regression): about 1 when synthetic rows teach the task as
well as real ones.  AUC's chance level is 0.5, so a ratio of AUCs overstates utility near
chance (0.6 / 0.9 = 0.67 although the synthetic-trained model captures a fifth of the lift);
the scores themselves are reported beside it.  Omitted when the real-trained R^2 is <= 0
(the ratio has no meaning then).
"""

from __future__ import annotations

import numpy as np

from .metrics_inputs import (TableEvaluationError, canonical, category_codes, column_types,
                             described_target, encode, limited_threads, task_of)


def _model(task: str, categorical: np.ndarray, seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    cls = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor
    return cls(categorical_features=categorical if categorical.any() else None, random_state=seed)


def equal_size(real, n: int, target: str, task: str, seed: int):
    """`real` (a DataFrame) cut to a seeded subsample of `n` rows when it has more, stratified
    on `target` for a classification task (each class keeps its share, rounded; a class too
    rare to split falls back to a plain subsample); `real` itself otherwise."""
    if len(real) <= n:
        return real
    from sklearn.model_selection import train_test_split

    stratify = real[target] if task == "classification" else None
    try:
        kept, _ = train_test_split(real, train_size=n, stratify=stratify, random_state=seed)
    except ValueError:   # a class of one row cannot be stratified
        kept, _ = train_test_split(real, train_size=n, random_state=seed)
    return kept.reset_index(drop=True)


def _class_probabilities(X_train, y_train, X_test, classes: list, categorical, seed) -> np.ndarray:
    """(n_test, len(classes)) probabilities of a classifier trained on (X_train, y_train),
    zero for the classes y_train lacks."""
    proba = np.zeros((len(X_test), len(classes)))
    seen = sorted(set(y_train))
    if len(seen) == 1:  # one class: the only thing such rows can teach
        if seen[0] in classes:
            proba[:, classes.index(seen[0])] = 1.0
        return proba
    model = _model("classification", categorical, seed).fit(X_train, y_train)
    p = model.predict_proba(X_test)  # columns follow model.classes_
    for j, c in enumerate(model.classes_):
        if c in classes:
            proba[:, classes.index(c)] = p[:, j]
    return proba


def _classification_scores(proba: np.ndarray, y_test: np.ndarray, classes: list, positive) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    predicted = np.asarray(classes, dtype=object)[proba.argmax(1)]
    if len(classes) == 2:
        k = classes.index(positive)
        auc = roc_auc_score(y_test == positive, proba[:, k])
        f1 = f1_score(y_test == positive, predicted == positive)
    else:
        present = [c for c in classes if (y_test == c).any()]
        auc = np.mean([roc_auc_score(y_test == c, proba[:, classes.index(c)]) for c in present])
        f1 = f1_score(y_test, predicted, labels=classes, average="macro", zero_division=0.0)
    return {"auc": float(auc), "f1": float(f1)}


def utility_scores(real_train, real_holdout, synthetic, columns, target: str | None = None,
                   seed: int = 0, threads: int = 1) -> dict[str, float]:
    """Synthetic-trained against real-trained gradient boosting on the real held-out rows.

    real_train, real_holdout, synthetic: DataFrames holding the described columns.
    columns: a column description; target: the column to predict (default: the
    description's target).  seed: the models' random_state.  threads: their OpenMP threads
    (diffusion/tabular/metrics_inputs.py `limited_threads`).

    Returns for a categorical target {"utility_auc", "utility_f1" (synthetic-trained),
    "utility_auc_real", "utility_f1_real" (real-trained, on as many real training rows as
    there are synthetic ones, or all when fewer), "utility_ratio"}; for a numerical
    or integer one {"utility_r2", "utility_r2_real", "utility_ratio"} (ratio omitted when
    utility_r2_real <= 0); {} without a target.  Raises TableEvaluationError for bad input,
    a table whose target is all null, a real training target with one class, or held-out
    rows of a single class (AUC needs two)."""
    types = column_types(columns)
    target = described_target(columns, target)
    task = task_of(types, target)
    if task is None:
        return {}
    with limited_threads(threads):
        return _utility(real_train, real_holdout, synthetic, types, target, task, seed)


def _utility(real_train, real_holdout, synthetic, types, target, task, seed) -> dict[str, float]:
    frames = {}
    for name, frame in (("real_train", real_train), ("real_holdout", real_holdout), ("synthetic", synthetic)):
        frame = canonical(frame, types, name)
        frame = frame[frame[target].notna()].reset_index(drop=True)
        if len(frame) == 0:
            raise TableEvaluationError(f"{name}: every value of the target {target!r} is null")
        frames[name] = frame
    codes = category_codes(frames["real_train"], types)
    shares = frames["real_train"][target].value_counts()   # of all real rows: classes, positive
    frames["real_train"] = equal_size(frames["real_train"], len(frames["synthetic"]), target,
                                      task, seed)
    X = {}
    for name, frame in frames.items():
        X[name], categorical = encode(frame, types, codes, exclude=(target,))
    y = {name: frame[target].to_numpy() for name, frame in frames.items()}

    if task == "regression":
        from sklearn.metrics import r2_score

        r2 = {}
        for source in ("synthetic", "real_train"):
            model = _model("regression", categorical, seed).fit(X[source], y[source])
            r2[source] = float(r2_score(y["real_holdout"], model.predict(X["real_holdout"])))
        out = {"utility_r2": r2["synthetic"], "utility_r2_real": r2["real_train"]}
        if r2["real_train"] > 0:
            out["utility_ratio"] = r2["synthetic"] / r2["real_train"]
        return out

    if len(shares) < 2:
        raise TableEvaluationError(
            f"real_train: the target {target!r} has one class ({shares.index[0]!r}); a classifier needs two")
    if frames["real_holdout"][target].nunique() < 2:
        raise TableEvaluationError(
            f"real_holdout: the target {target!r} has one class ({y['real_holdout'][0]!r}); AUC needs both "
            f"classes among the held-out rows")
    classes = sorted(shares.index)
    # the rarer class is the one worth finding (churners, defaults); ties: the later name
    positive = min(sorted(classes, reverse=True), key=lambda c: shares[c])
    scores = {}
    for source in ("synthetic", "real_train"):
        proba = _class_probabilities(X[source], y[source], X["real_holdout"], classes, categorical, seed)
        scores[source] = _classification_scores(proba, y["real_holdout"], classes, positive)
    return {
        "utility_auc": scores["synthetic"]["auc"], "utility_f1": scores["synthetic"]["f1"],
        "utility_auc_real": scores["real_train"]["auc"], "utility_f1_real": scores["real_train"]["f1"],
        "utility_ratio": scores["synthetic"]["auc"] / scores["real_train"]["auc"],
    }
