"""The rule that picks the model the pipeline registers and serves, from the evaluation table:
the student with the fewest network evaluations whose FID is within `max_fid_ratio` x the
teacher's best FID, else the teacher at its best setting (pipeline.max_fid_ratio)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from diffusion.atomic import atomic_folder
from diffusion.evaluation_settings import sampling_rate
from diffusion.model import ModelError, read_spec, resolve_model_path, write_spec


@dataclass
class Candidate:
    """The model the pipeline registers: a model folder and the setting it is served at."""
    name: str         # 'teacher', 'consistency', 'progressive-4', ...
    source: Path      # its model folder
    sampler: str
    steps: int
    row: dict         # its row of the evaluation table

    def describe(self) -> str:
        # the metric's name (samples_per_s) is the same for every data; the words follow the data
        noun = read_spec(self.source).data.noun
        return (f"{self.name} ({self.sampler}, {int(self.row['nfe'])} NFE): "
                f"FID {self.row['fid']:.3f}, {sampling_rate(self.row):.0f} {noun}/s")


def choose_candidate(table: pd.DataFrame, folders: dict[str, Path], max_fid_ratio: float) -> Candidate:
    """The student with the fewest network evaluations whose FID is within `max_fid_ratio` x
    the teacher's best, else the teacher at its best setting. `folders` maps the table's model
    names ('teacher' and each student's) to model folders."""
    teacher = table[table["model"] == "teacher"].sort_values("fid").iloc[0].to_dict()
    limit = max_fid_ratio * teacher["fid"]
    fast = table[(table["model"] != "teacher") & (table["fid"] <= limit)]
    row = fast.sort_values(["nfe", "fid"]).iloc[0].to_dict() if len(fast) else teacher
    if row["model"] not in folders:
        raise ModelError(f"no model folder for {row['model']!r} of the evaluation table "
                         f"(folders for: {sorted(folders)})")
    return Candidate(row["model"], Path(folders[row["model"]]), row["sampler"], int(row["steps"]), row)


def write_candidate(candidate: Candidate, dest) -> Path:
    """A copy of the candidate's model folder whose model.json serves it at the chosen setting,
    replaced atomically; diffusion.atomic.WriteError (path and cause) when the disk refuses it."""
    dest = Path(dest)
    source = resolve_model_path(candidate.source)
    with atomic_folder(dest, "model folder") as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        spec = read_spec(tmp)
        sampling = spec.sampling.model_copy(update={"sampler": candidate.sampler,
                                                    "steps": candidate.steps})
        write_spec(spec.model_copy(update={"sampling": sampling, "served_as": candidate.name}), tmp)
    return dest
