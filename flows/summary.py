"""The flow run's markdown summary (a Prefect artifact): metrics table and promotion decision;
for a table model also the scores of the rows it is served at (sampler and NFE named)."""

from __future__ import annotations

from diffusion.evaluation_settings import sampling_rate
from tasks.step_result import StepResult
from tasks.table_rows import served_and_floor, served_setting, shown, utility_note


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _rows_section(challenger: StepResult) -> list[str]:
    """A table model's rows scores, of the setting it is served at, beside the floor's: the
    numbers its card and registered version carry (table_<metric>, table_floor_<metric>)."""
    setting = challenger.details.get("rows_setting")
    if setting is None:
        return []
    served, floor = served_and_floor(challenger.metrics)
    lines = ["", f"## Rows of the served model: {setting['model']} "
                 f"({served_setting(setting['sampler'], setting['nfe'])})", ""]
    if not served:
        return lines + ["Its rows were not scored."]
    lines += [_row(["score", "served rows", "floor (held-out real rows)"]), _row(["---"] * 3)]
    floors = {key: value for key, _, value, _ in shown(floor)}
    for key, label, value, note in shown(served):   # the pair trends' note: how many pairs
        shown_floor = f"{floors[key]:.3f}" if key in floors else "-"
        lines.append(_row([f"{label} ({note})" if note else label, f"{value:.3f}", shown_floor]))
    note = utility_note(served)
    if note is not None:
        lines += ["", note]
    return lines


def _outcome(decision: dict) -> str:
    """' (tie)' etc. when the step reports the rule's outcome and the reason does not lead with it."""
    outcome = decision.get("outcome")
    if not outcome or str(decision.get("reason", "")).startswith(f"{outcome}:"):
        return ""
    return f" ({outcome})"


def _with_interval(row: dict) -> str:
    """FID with its bootstrap interval (diffusion/bootstrap.py) when the row has one."""
    if row.get("fid_lo") is None or row.get("fid_hi") is None:
        return f"{row['fid']:.3f}"
    return f"{row['fid']:.3f} [{row['fid_lo']:.3f}, {row['fid_hi']:.3f}]"


def summary_markdown(result: dict, evaluation: StepResult, challenger: StepResult,
                     decision: StepResult) -> str:
    """The summary of one flow run: its result (the flow's return value) and the StepResults of
    the evaluate, register and promote steps."""
    rows_section = _rows_section(challenger)
    evaluation, challenger, decision = evaluation.details, challenger.details, decision.details
    rows = sorted(evaluation["table"], key=lambda r: (r["model"] != "teacher", r["model"], r["nfe"]))
    if result.get("same_as_champion"):   # a rerun with nothing changed: no new version
        head = [f"# {result['model']}: nothing registered", "",
                f"**Registered:** nothing: version {result['version']}, the champion, was made "
                "from the same inputs (weights, data, code, settings and served setting)", "",
                "**Promotion:** none: the champion stays", ""]
    else:
        head = [f"# {result['model']} version {result['version']}", "",
                f"**Promotion:** {'promoted to champion' if decision['promoted'] else 'not promoted'}"
                # the rule's word (promote, keep, tie) leads the reason of a paired decision
                f"{_outcome(decision)}: {decision['reason']}", ""]
    none = ("(none: the champion's release stands)" if result.get("same_as_champion")
            else "(none: not promoted)")
    lines = [*head,
             f"**Served as:** {challenger['candidate']}", "",
             f"**Release:** {decision['release'] or none}", "",
             f"**Dataset md5:** `{result['dataset_md5']}`; cached steps: "
             f"{', '.join(result['cached_steps']) or 'none'}", "",
             f"## Quality versus NFE (FID floor {evaluation['floor']:.3f})", "",
             # the rate's unit: images/s, rows/s (a table) or samples/s (vectors)
             _row(["model", "sampler", "NFE", "FID", "KID", f"{evaluation.get('noun', 'images')}/s"]),
             _row(["---"] * 6)]
    for r in rows:
        lines.append(_row([r["model"], r["sampler"], int(r["nfe"]), _with_interval(r),
                           f"{r.get('kid_mean', float('nan')):.4f}", f"{sampling_rate(r):.0f}"]))
    if any(r.get("fid_lo") is not None for r in rows):
        lines += ["", "FID [lo, hi]: the bootstrap interval of the FID at this n (evaluate."
                      "confidence_level; diffusion/bootstrap.py): its width is this evaluation's "
                      "noise; the promotion compares two models with a paired, narrower one."]
    lines += rows_section
    if decision.get("champion_metrics"):
        champ = decision["champion_metrics"]
        lines += ["", f"Previous champion (version {decision['previous_champion']}) on the same "
                      f"evaluation: FID {champ.get('fid', float('nan')):.3f}"]
    return "\n".join(lines) + "\n"
