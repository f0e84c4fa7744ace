"""The flow run's markdown summary (a Prefect artifact): metrics table and promotion decision."""

from __future__ import annotations

from tasks.step_result import StepResult


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def summary_markdown(result: dict, evaluation: StepResult, challenger: StepResult,
                     decision: StepResult) -> str:
    """The summary of one flow run: its result (the flow's return value) and the StepResults of
    the evaluate, register and promote steps."""
    evaluation, challenger, decision = evaluation.details, challenger.details, decision.details
    rows = sorted(evaluation["table"], key=lambda r: (r["model"] != "teacher", r["model"], r["nfe"]))
    lines = [f"# {result['model']} version {result['version']}", "",
             f"**Promotion:** {'promoted to champion' if decision['promoted'] else 'not promoted'}: "
             f"{decision['reason']}", "",
             f"**Served as:** {challenger['candidate']}", "",
             f"**Release:** {decision['release'] or '(none: not promoted)'}", "",
             f"**Dataset md5:** `{result['dataset_md5']}`; cached steps: "
             f"{', '.join(result['cached_steps']) or 'none'}", "",
             f"## Quality versus NFE (FID floor {evaluation['floor']:.3f})", "",
             # the rate's unit: images/s, rows/s (a table) or samples/s (vectors)
             _row(["model", "sampler", "NFE", "FID", "KID", f"{evaluation.get('noun', 'images')}/s"]),
             _row(["---"] * 6)]
    for r in rows:
        lines.append(_row([r["model"], r["sampler"], int(r["nfe"]), f"{r['fid']:.3f}",
                           f"{r.get('kid_mean', float('nan')):.4f}", f"{r['images_per_s']:.0f}"]))
    if decision.get("champion_metrics"):
        champ = decision["champion_metrics"]
        lines += ["", f"Previous champion (version {decision['previous_champion']}) on the same "
                      f"evaluation: FID {champ.get('fid', float('nan')):.3f}"]
    return "\n".join(lines) + "\n"
