"""Progress written where no person watches a terminal: a few plain lines, never tqdm's
carriage-return redraws (diffusion/progress.py, used by diffusion/loop.py)."""

from __future__ import annotations

import io
import logging

import pytest
import torch

from diffusion.loop import optimise
from diffusion.progress import Progress, duration


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "diffusion.progress"]


def run(total, seconds_per_step, caplog, **kwargs) -> tuple[list[str], str]:
    clock, stream = Clock(), io.StringIO()
    with caplog.at_level(logging.INFO, logger="diffusion.progress"):
        bar = Progress(total, desc="train", stream=stream, clock=clock, **kwargs)
        for step in range(total - kwargs.get("initial", 0)):
            clock.t += seconds_per_step
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}", img_s="410")
            bar.update(1)
        bar.close()
    return lines(caplog), stream.getvalue()


@pytest.mark.parametrize("total, seconds_per_step", [(5000, 0.5), (100000, 0.01), (7, 60.0)])
def test_a_long_loop_writes_at_most_eleven_short_plain_lines(caplog, total, seconds_per_step):
    written, stream = run(total, seconds_per_step, caplog)
    assert stream == ""   # nothing of tqdm's on the stream
    assert 2 <= len(written) <= 11, written
    assert all("\r" not in line and "\n" not in line and len(line) < 160 for line in written)
    assert written[-1].startswith(f"train: {total}/{total} steps in ")
    assert "loss=" in written[-1]


def test_lines_wait_for_a_tenth_of_the_steps_and_thirty_seconds_whichever_is_rarer(caplog):
    # 1000 steps of 1/8 s: a tenth (100 steps) takes 12.5 s, so a line every 240 steps (30 s)
    written, _ = run(1000, 0.125, caplog)
    assert [line.split(" ")[1] for line in written] == ["240/1000", "480/1000", "720/1000",
                                                       "960/1000", "1000/1000"]
    assert written[0] == ("train: 240/1000 steps (24 %), loss=0.0042, img_s=410; 30 s elapsed, "
                          "about 1.6 min left")
    # steps of 1 min: a line every tenth (100 steps), not every step
    caplog.clear()
    written, _ = run(1000, 60.0, caplog)
    assert [line.split(" ")[1] for line in written[:3]] == ["100/1000", "200/1000", "300/1000"]
    # a loop shorter than 30 s writes only its last line
    caplog.clear()
    written, _ = run(1000, 0.001, caplog)
    assert written == ["train: 1000/1000 steps in 1 s (1000 step/s), loss=0.0010, img_s=410"]


def test_a_resumed_loop_estimates_from_its_own_steps(caplog):
    written, _ = run(1000, 1.0, caplog, initial=500)
    # 500 steps at 1 s: lines at 600, 700, ... (100 steps = 100 s > 30 s); at 600, 400 left
    assert written[0].startswith("train: 600/1000 steps (60 %)")
    assert written[0].endswith("1.7 min elapsed, about 6.7 min left")
    assert written[-1].startswith("train: 1000/1000 steps in 8.3 min (1 step/s)")


def test_a_terminal_keeps_the_live_bar_and_disabled_shows_nothing(caplog):
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="diffusion.progress"):
        bar = Progress(50, desc="train", stream=terminal)
        for _ in range(50):
            bar.update(1)
        bar.close()
        quiet = Progress(50, desc="train", stream=io.StringIO(), enabled=False)
        for _ in range(50):
            quiet.update(1)
        quiet.close()
    assert "\r" in terminal.getvalue() and "50/50" in terminal.getvalue()
    assert lines(caplog) == []


def test_bad_cadence_is_refused():
    with pytest.raises(ValueError, match="every_fraction"):
        Progress(10, every_fraction=0)


def test_duration_reads_as_a_person_says_it():
    assert [duration(s) for s in (42, 186, 8640)] == ["42 s", "3.1 min", "2.4 h"]


def test_the_training_loop_logs_plain_lines_off_a_terminal(caplog, capsys):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.randn(8, 2)
    with caplog.at_level(logging.INFO, logger="diffusion.progress"):
        optimise(net, opt, None, step=0, total=30, loss_at=lambda s: net(x).pow(2).mean(),
                 lr=0.01, lr_warmup_steps=1, grad_clip=0.0, log_every=10, checkpoint_every=30,
                 samples_per_step=8, progress=True, desc="toy")
    assert "\r" not in capsys.readouterr().err
    written = lines(caplog)
    assert len(written) == 1 and written[0].startswith("toy: 30/30 steps in ")


def test_a_training_loops_rate_is_named_by_what_it_trains_on(caplog):
    """optimise's progress names its rate after the samples (`noun`): rows_s for a table."""
    import torch

    from diffusion.loop import optimise

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.ones(4, 2)
    with caplog.at_level("INFO", logger="diffusion.progress"):
        optimise(net, opt, None, step=0, total=3, loss_at=lambda _: net(x).pow(2).mean(), lr=0.1,
                 lr_warmup_steps=1, grad_clip=1.0, log_every=1, checkpoint_every=3,
                 samples_per_step=4, progress=True, noun="rows")
    said = [r.getMessage() for r in caplog.records]
    assert said and "rows_s=" in said[-1] and "images_s" not in said[-1], said
