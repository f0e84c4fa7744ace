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
