"""`evaluate --students` takes only students of the evaluated teacher: each student's recorded
teacher must be the teacher or a student that descends from it (progressive rounds chain)."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion.model import ModelError
from tasks.steps.evaluate import require_students_of

TEACHER = "t" * 64


def test_a_progressive_chain_and_a_consistency_student_descend_from_the_teacher():
    students = {Path("round_02"): ("r2" * 32, "r1" * 32),     # listed before its own teacher
                Path("round_01"): ("r1" * 32, TEACHER),
                Path("consistency"): ("c" * 64, TEACHER)}
    require_students_of(TEACHER, students, "teacher")   # no error


def test_a_student_of_another_teacher_is_refused_naming_it():
    students = {Path("round_01"): ("r1" * 32, TEACHER),
                Path("theirs/consistency"): ("c" * 64, "o" * 64)}
    with pytest.raises(ModelError, match=r"student theirs/consistency was distilled from another "
                                         r"teacher \(weights sha256 oooooooooooo\)"):
        require_students_of(TEACHER, students, "runs/digits")


def test_a_round_whose_chain_breaks_is_refused():
    # round 2 of another run: its teacher (that run's round 1) is not among ours
    students = {Path("round_01"): ("r1" * 32, TEACHER), Path("round_02"): ("x2" * 32, "x1" * 32)}
    with pytest.raises(ModelError, match="student round_02 was distilled from another teacher"):
        require_students_of(TEACHER, students, "teacher")


def test_a_student_that_records_no_teacher_is_kept_with_a_warning(capsys):
    require_students_of(TEACHER, {Path("old"): ("o" * 64, None)}, "teacher")
    assert "warning: student old records no teacher" in capsys.readouterr().err
