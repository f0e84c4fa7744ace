"""Metric libraries that print: their text never reaches the console or a Prefect run's logs
(which take every call of builtins.print while a flow runs with log_prints); it becomes a
debug record of diffusion.metrics."""

from __future__ import annotations

import builtins
import logging

import numpy as np
import prdc

from diffusion.metrics import prdc_metrics


def test_prdc_prints_nothing_even_where_builtins_print_is_replaced(monkeypatch, capsys, caplog):
    calls = []
    # what Prefect's log_prints does for the length of a flow run
    monkeypatch.setattr(builtins, "print", lambda *a, **k: calls.append(a))
    real, fake = np.random.default_rng(0).normal(size=(2, 40, 3))
    scores = prdc_metrics(real, fake, k=3)
    assert calls == [] and capsys.readouterr() == ("", "")
    with caplog.at_level(logging.DEBUG, logger="diffusion.metrics"):
        prdc_metrics(real, fake, k=3)
    assert calls == []
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "Num real: 40 Num fake: 40" in caplog.records[0].getMessage()
    # the library's own numbers, and its module left as it was
    expected = prdc.compute_prdc(real, fake, 3)
    assert scores == {key: float(expected[key]) for key in scores}
    assert "print" not in vars(prdc.prdc)


def test_prdc_leaves_the_process_warning_filters_as_they_were():
    """prdc's distances (scikit-learn, n_jobs=8) ran in joblib threads that each swap the
    process-wide warning filters; they came back reordered or, in a race, empty, and every
    later parallel scikit-learn call warned "delayed should be used with Parallel" (94 such
    lines in one `make run`).  Computed in the calling thread, nothing changes."""
    import warnings

    real, fake = np.random.default_rng(1).normal(size=(2, 300, 8))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="a filter the call must keep in place")
        before = list(warnings.filters)
        for _ in range(3):
            prdc_metrics(real, fake, k=5)
        after = list(warnings.filters)
    assert after == before
    assert [str(w.message) for w in seen] == []
