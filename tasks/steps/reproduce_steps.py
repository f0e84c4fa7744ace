"""The model steps of one pipeline run, replayed by `dmops reproduce` inside a git worktree of
the recorded commit.

tasks/steps/reproduce.py runs a copy of this file in a subprocess whose working folder is the
worktree and whose PYTHONPATH starts with it, so `import diffusion` / `import tasks` find the
commit's own packages (the recorded commit need not contain this file).  It does
what flows/pipeline.py does between the data gate and the registry, without Prefect or MLflow:

    train_teacher -> distill_sampler for each of pipeline.methods -> evaluate_model
    -> choose_candidate -> write_candidate

with the recorded configuration, the versioned dataset folder and its md5, and a fresh feature
cache.  It reads one JSON request (argv[1]) and writes one JSON result (argv[2]): the evaluation
table, the sha256 and provenance of every model, the served candidate, and the files the
`diffusion` and `tasks` packages were imported from.  Progress goes to stdout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# what the flow leaves out of the settings its steps are keyed by (flows/pipeline.py)
NOT_STEP_SETTINGS = ("out_dir", "pipeline", "profile")


def step_settings(config: dict, feature_cache: str) -> dict:
    """The flow's `cfg_json` of a recorded configuration (lineage/config.json): the settings
    without out_dir, pipeline and profile, and the evaluation's feature cache at `feature_cache`
    (absolute), so the feature extractor is made afresh."""
    cfg_json = {k: v for k, v in config.items() if k not in NOT_STEP_SETTINGS}
    cfg_json["evaluate"] = {**cfg_json["evaluate"], "feature_cache": str(feature_cache)}
    return cfg_json


def replay(request: dict) -> dict:
    """Run the model steps as the flow does; returns the result described in the module doc."""
    import diffusion
    import pandas as pd
    import tasks
    from diffusion.config import Config
    from diffusion.evaluation import student_name
    from diffusion.model import read_spec
    from tasks.steps.distill import distill_sampler
    from tasks.steps.evaluate import evaluate_model
    from tasks.steps.lineage import model_weights_sha256
    from tasks.pipeline_settings import PipelineConfig
    from tasks.steps.select_candidate import choose_candidate, write_candidate
    from tasks.steps.train_teacher import train_teacher

    config, work = request["config"], Path(request["work_dir"])
    data_dir, md5 = request["data_dir"], request["dataset_md5"]
    settings = PipelineConfig.model_validate(config).pipeline
    cfg_json = step_settings(config, request["feature_cache"])

    def say(text: str) -> None:
        print(f"reproduce: {text}", flush=True)

    say(f"train_teacher -> {work / 'teacher'}")
    teacher = train_teacher(Config.model_validate({**cfg_json, "out_dir": str(work / "teacher")}),
                            resume=True, data_dir=data_dir, dataset_md5=md5)
    teacher_sha = model_weights_sha256(teacher.model_dir)
    folders = {"teacher": str(teacher.model_dir)}
    weights = {"teacher": teacher_sha}
    students: dict[str, str] = {}
    cfg = Config.model_validate(cfg_json)
    for method in settings.methods:
        out = work / "students" / teacher_sha[:12]
        say(f"distill {method} -> {out}")
        for folder in distill_sampler(cfg, method, teacher.model_dir, out_dir=str(out),
                                      resume=True, data_dir=data_dir, dataset_md5=md5):
            name = student_name(read_spec(folder))
            students[name] = str(folder)
            weights[name] = model_weights_sha256(folder)
    folders.update(students)
    say(f"evaluate -> {work / 'evaluation'}")
    report = evaluate_model(teacher.model_dir, cfg, work / "evaluation",
                            students=[Path(p) for p in students.values()], data_dir=data_dir)
    table = report.table.to_dict(orient="records")
    candidate = choose_candidate(pd.DataFrame(table), {k: Path(v) for k, v in folders.items()},
                                 settings.max_fid_ratio)
    served = write_candidate(candidate, work / "candidate" / "model")
    provenance = {}
    for name, folder in folders.items():
        p = read_spec(folder).provenance
        provenance[name] = None if p is None else {**p.model_dump(mode="json"),
                                                   "settings_sha256": p.settings_sha256}
    return {"modules": {"diffusion": diffusion.__file__, "tasks": tasks.__file__},
            "table": table, "floor": report.floor, "folders": folders, "weights": weights,
            "provenance": provenance,
            "candidate": {"name": candidate.name, "sampler": candidate.sampler,
                          "nfe": int(candidate.row["nfe"]), "model_dir": str(served)}}


def main(argv: list[str]) -> None:
    request = json.loads(Path(argv[1]).read_text())
    result = replay(request)
    Path(argv[2]).write_text(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main(sys.argv)
