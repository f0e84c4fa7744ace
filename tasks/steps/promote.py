"""Pipeline step: decide whether the challenger beats the champion, and act on it.

`promote` is the whole step, and the Prefect task only wraps it.  Holding the model's promotion
lock (tasks.adapters.promotion_lock) from start to end, it scores the current champion on the challenger's
own terms, decides, releases, verifies, moves `champion` and appends to the model's promotion
history (tasks.adapters.promotion_history), so a second promotion of the same model waits and then
decides against the champion as the first one left it.

Equal terms: the champion is scored with `tasks.steps.evaluate.score_model` on the versioned dataset
folder the challenger was evaluated on (`data_dir`), hence the same test split, the same feature
extractor (cached by the training split's hash), n and seed (the config's `evaluate` section).

The rule for a champion that cannot be scored on that data: when the champion makes samples of
another shape than the challenger, or scoring it on the challenger's data raises
`diffusion.model.ModelError` (another modality), the two are not comparable and the challenger is
NOT promoted; the decision's reason names both shapes (or the error) and the way out (another
`pipeline.model_name`), and it is recorded like any other decision: version tags and history,
with `comparable: false`.  Never a crash, never a silent win.

`decide` is pure: it compares one metric of the two and says why in words.  The rule, for FID
and KID (`pipeline.promote.metric` fid or kid_mean): the challenger is re-scored beside the
champion, and a paired bootstrap (diffusion/bootstrap.py `paired_difference`: one resample
of the test features shared by both models in each replicate, and one of the generated
features, whose i-th rows start from the same noise) gives the `level` interval of
D = metric(challenger) - metric(champion), lower is better for both:

- `promote`: the interval lies below 0, the challenger is better beyond the noise;
- `keep`: it lies above 0, the challenger is worse beyond the noise;
- `tie`: it contains 0.  A tie keeps the champion (a model as good as the one serving is no
  reason to move the alias: a champion that flips on noise is not one a team trusts), unless
  the challenger is cheaper to sample (fewer NFE per sample) at that equal quality, when it is
  promoted.

The outcome word, the difference and its interval are in the reason, the history entry
(`outcome`, `difference`), the version tag `promotion_outcome` and the flow summary.  Any
other metric keeps the older relative-tolerance rule (`pipeline.promote.tolerance`): no
resampling is defined here for it (precision, a table's utility score), so that is the only
rule it can have.  `apply` makes it true, as one transaction (tasks.steps.promotion_transaction): the decision is
stored as the model's pending promotion first; on a win the immutable S3 release is written and
read back verifying every checksum, and only THEN `champion` moves, so whatever champion points
at always has a release that readers accept; either way the decision is recorded on the
challenger version as tags `promotion` and `promotion_reason` and in the history; the pending
record goes last.  A promotion interrupted part-way (a server down, a crash) leaves the pending
record, readers refuse its release meanwhile, and the model's next promotion finishes it or rolls
it back before deciding anything, and says so.

Transient server errors: every request is retried within bounds (tasks.adapters.servers); a server that
stays down fails the step with one line naming it, and what the promotion left pending.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from pathlib import Path

from diffusion.model import ModelError, read_spec

from tasks.adapters.pending_promotion import PendingPromotion, PromotionInterrupted, write_pending
from tasks.adapters.promotion_lock import PromotionLock, PromotionLockLost
from tasks.adapters.registry import (champion_version, download_model, set_descriptions,
                                     verify_registered_copy, version_tags)
from tasks.adapters.model_card import model_card
from tasks.adapters.release import (pending_key, prepare_release_files, release_uri,
                                    s3_client_from_env)
from tasks.adapters.servers import ServerUnavailable
from tasks.number_text import difference_text, interval_text
from tasks.steps.promotion_transaction import PROMOTED, Completion, complete, recover
from tasks.say import say


READ_NOW = object()   # apply(previous=...): read the champion from the registry


class PromotionError(ValueError):
    """The comparison cannot be made (a metric is missing or not a number)."""


PROMOTE, KEEP, TIE = "promote", "keep", "tie"
# the metrics a paired bootstrap is defined for: settings.metric -> diffusion.bootstrap's name
BOOTSTRAPPED = {"fid": "fid", "kid_mean": "kid"}


@dataclass(frozen=True)
class Decision:
    """promoted: whether champion moves; outcome: PROMOTE, KEEP or TIE (a tie that promotes
    the cheaper challenger is TIE with promoted True); difference: the paired interval of
    metric(challenger) - metric(champion) as a dict (estimate, lo, hi, level, replicates), None
    under the tolerance rule or without a champion."""
    promoted: bool
    reason: str
    metric: str
    challenger_value: float
    champion_value: float | None = None
    release_uri: str | None = None
    outcome: str | None = None
    difference: dict | None = None


def _value(record: dict, metric: str, who: str) -> float:
    if metric not in record:
        raise PromotionError(f"the {who} has no metric {metric!r} (it has: "
                             f"{sorted(record) or 'nothing'}); evaluate both models with the "
                             "same metrics before comparing them")
    try:
        value = float(record[metric])
    except (TypeError, ValueError):
        raise PromotionError(f"the {who}'s {metric} is {record[metric]!r}, not a number") from None
    if not math.isfinite(value):
        raise PromotionError(f"the {who}'s {metric} is {value}; a model with a non-finite metric "
                             "cannot be compared: check its evaluation")
    return value


def decide(challenger: dict, champion: dict | None, metric: str, tolerance: float,
           lower_is_better: bool = True, difference=None) -> Decision:
    """The decision on `metric` (see the module docstring).

    difference: the paired bootstrap interval of metric(challenger) - metric(champion)
    (diffusion.bootstrap.Interval or a dict with lo, hi, level, replicates): the rule is then
    promote / keep / tie by where 0 lies, a tie promoting only a challenger with fewer `nfe`
    (both dicts' "nfe").  None: the relative-tolerance rule: promote when the challenger's
    `metric` is no worse than the champion's by more than `tolerance` (relative to the
    champion's magnitude).  Without a champion the challenger is promoted either way.
    Raises PromotionError naming a missing or non-numeric metric or a bad tolerance."""
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise PromotionError(f"tolerance must be a finite number >= 0, got {tolerance}")
    new = _value(challenger, metric, "challenger")
    if champion is None:
        return Decision(True, f"no champion yet: challenger {metric} {new:.4g} becomes the first",
                        metric, new, outcome=PROMOTE)
    old = _value(champion, metric, "champion")
    if difference is not None:
        return _paired_rule(challenger, champion, metric, new, old, lower_is_better,
                            difference if isinstance(difference, dict) else difference.to_dict())
    # |old| keeps the allowance on the lenient side for metrics that can be negative
    allowance = tolerance * abs(old)
    if lower_is_better:
        bound, op, sign = old + allowance, "<=", "+"
        promoted = new <= bound
    else:
        bound, op, sign = old - allowance, ">=", "-"
        promoted = new >= bound
    verdict = op if promoted else {"<=": ">", ">=": "<"}[op]
    reason = (f"challenger {metric} {new:.4g} {verdict} champion {old:.4g} x (1 {sign} "
              f"{tolerance:g}) = {bound:.4g} ({'lower' if lower_is_better else 'higher'} is better)")
    if old < 0:  # a negative champion: say it in the additive form actually used
        reason = reason.replace(f"x (1 {sign} {tolerance:g})", f"{sign} {tolerance:g} x |{old:.4g}|")
    return Decision(promoted, reason, metric, new, old, outcome=PROMOTE if promoted else KEEP)


def _nfe(record: dict) -> float | None:
    try:
        value = float(record.get("nfe"))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _paired_rule(challenger: dict, champion: dict, metric: str, new: float, old: float,
                 lower_is_better: bool, difference: dict) -> Decision:
    """promote / keep / tie by the interval of new - old (the module docstring's rule)."""
    lo, hi = float(difference["lo"]), float(difference["hi"])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise PromotionError(f"the {metric} difference interval [{lo}, {hi}] is not an interval; "
                             "check the two models' features")
    better, worse = (hi < 0, lo > 0) if lower_is_better else (lo > 0, hi < 0)
    scale = max(abs(new), abs(old))   # the difference's precision: the compared values'
    shown = (f"challenger {metric} {new:.4g} vs champion {old:.4g}: difference "
             f"{difference_text(new - old, scale)}, {difference['level'] * 100:g} % paired bootstrap "
             f"interval {interval_text(lo, hi, scale, sign=True)} "
             f"({difference['replicates']} replicates; {'lower' if lower_is_better else 'higher'} "
             "is better)")
    if better:
        return Decision(True, f"promote: {shown}: better beyond the measurement noise", metric,
                        new, old, outcome=PROMOTE, difference=difference)
    if worse:
        return Decision(False, f"keep: {shown}: worse beyond the measurement noise", metric,
                        new, old, outcome=KEEP, difference=difference)
    ours, theirs = _nfe(challenger), _nfe(champion)
    cheaper = ours is not None and theirs is not None and ours < theirs
    cost = (f"{ours:g} NFE per sample against the champion's {theirs:g}"
            if ours is not None and theirs is not None else "NFE not known for both")
    if cheaper:
        return Decision(True, f"tie: {shown}: equal within the noise, and the challenger is "
                              f"cheaper to sample ({cost}): promoted", metric, new, old,
                        outcome=TIE, difference=difference)
    return Decision(False, f"tie: {shown}: equal within the noise, and the challenger is not "
                           f"cheaper to sample ({cost}): the champion stays", metric, new, old,
                    outcome=TIE, difference=difference)


def paired_interval(challenger, champion, settings, challenger_value: float,
                    champion_value: float) -> dict:
    """The paired bootstrap interval of metric(challenger) - metric(champion) (settings: the
    PromoteSettings; challenger / champion: tasks.steps.evaluate.Score of each, scored on the
    same test split with the same n and seed), placed at the recorded difference
    challenger_value - champion_value: its width comes from the features, its centre from the
    two rows the decision names (the same number when both rows come from one scoring)."""
    from diffusion.bootstrap import paired_difference

    if len(challenger.real_f) != len(champion.real_f) or not bool(
            (challenger.real_f == champion.real_f).all()):
        raise PromotionError("the challenger and the champion were scored on different test "
                             "features; a paired comparison needs one test split and one "
                             "feature extractor")
    interval = paired_difference(champion.real_f, champion.fake_f, challenger.fake_f,
                                 BOOTSTRAPPED[settings.metric], replicates=settings.replicates,
                                 level=settings.level, seed=settings.seed).to_dict()
    shift = (challenger_value - champion_value) - interval["estimate"]
    return {**interval, "estimate": challenger_value - champion_value,
            "lo": interval["lo"] + shift, "hi": interval["hi"] + shift}


def apply(decision: Decision, name: str, version: str, release_files: dict[str, Path], s3,
          bucket: str, lock: PromotionLock | None = None, entry: dict | None = None,
          flow_run_id: str | None = None, previous: str | None | object = READ_NOW) -> Decision:
    """Act on `decision` for model `name` version `version` as one transaction
    (tasks.steps.promotion_transaction): the decision is stored as pending first; then, on a win, the
    release (`release_files`: release-relative name -> local file) is written and verified,
    `lock` (when given) checked, and `champion` moved; the decision is recorded as version tags
    and a history entry (`entry`: its extra fields) either way; the pending record goes last.
    `previous`: the champion the decision was made against (default: read now).
    Returns the decision with its release URI (None unless promoted; a decision rolled back
    because `champion` moved meanwhile comes back not promoted).

    Raises ReleaseError when the version's release exists with other files or fails its
    checksums, PromotionLockLost when the lock was lost, PromotionInterrupted (naming the
    cause, and what is left for the next promotion to finish) when a server failed part-way:
    `champion` does not move then."""
    return _carry_out(decision, name, str(version), release_files, s3, bucket, lock,
                      entry or {}, flow_run_id,
                      champion_version(name) if previous is READ_NOW else previous)[0]


def _carry_out(decision: Decision, name: str, version: str, files: dict[str, Path], s3,
               bucket: str, lock, entry: dict, flow_run_id: str | None,
               previous: str | None) -> tuple[Decision, Completion]:
    uri = release_uri(bucket, name, version) if decision.promoted else None
    record = PendingPromotion(
        model=name, version=version, promoted=decision.promoted, reason=decision.reason,
        previous_champion=previous, release=uri, flow_run_id=flow_run_id,
        entry={"comparable": True, "challenger_metrics": None, "champion_metrics": None,
               **entry, "metric": decision.metric, "challenger_value": decision.challenger_value,
               "champion_value": decision.champion_value, "outcome": decision.outcome,
               "difference": decision.difference})
    metadata = None
    if decision.promoted:
        lineage = version_tags(name, version)
        metadata = {"registered_model": name, "version": version,
                    "promotion_reason": decision.reason, "metric": decision.metric,
                    "value": decision.challenger_value,
                    "tags": {k: v for k, v in lineage.items() if not k.startswith("promotion")}}
    write_pending(s3, bucket, record)
    try:
        done = complete(s3, bucket, record, files, metadata, lock=lock)
    except (ServerUnavailable, PromotionLockLost) as e:
        raise PromotionInterrupted(
            f"{e}; the {record.describe()} is left pending at "
            f"s3://{bucket}/{pending_key(name)} (champion unchanged unless it already moved); "
            f"the model's next promotion finishes it or rolls it back") from e
    return replace(decision, promoted=done.outcome == PROMOTED, release_uri=done.release,
                   reason=done.reason), done


# --- the whole step -------------------------------------------------------------------------

def sample_shape(model_dir) -> tuple[int, ...]:
    """The shape of one sample (e.g. (1, 8, 8), or (2,) for points) a model folder generates,
    from its model.json; ModelError when the folder has no readable model.json."""
    return read_spec(model_dir).shape


@dataclass(frozen=True)
class Challenger:
    """The registered version that competes: its version, model folder and evaluation row."""
    version: str
    model_dir: Path
    metrics: dict


@dataclass(frozen=True)
class PromotionResult:
    decision: Decision
    previous_champion: str | None
    champion_metrics: dict | None      # None: no champion, or not comparable
    comparable: bool
    history_key: str                   # the S3 key of the history entry


def _plain(metrics: dict | None) -> dict | None:
    """Metrics as JSON values (numpy scalars unwrapped, non-finite numbers as None)."""
    if metrics is None:
        return None
    out = {}
    for key, value in metrics.items():
        value = value.item() if hasattr(value, "item") else value
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            value = float(value) if math.isfinite(value) else None
        elif not isinstance(value, (str, bool, type(None))):
            value = str(value)
        out[str(key)] = value
    return out


def _not_comparable(champion: str, champion_dir: Path, challenger_dir: Path) -> str | None:
    theirs, ours = sample_shape(champion_dir), sample_shape(challenger_dir)
    if theirs == ours:
        return None
    return (f"champion v{champion} makes samples of shape {theirs}, the challenger {ours}: not "
            "comparable, so not promoted; data of another shape is another model: register it "
            "under another pipeline.model_name")


def promote(challenger: Challenger, model_name: str, settings, bucket: str, data_dir, cfg,
            work_dir, release_meta: dict, flow_run_id: str | None, *, s3=None, lease: dict | None = None,
            log=say) -> PromotionResult:
    """Promote `challenger` of `model_name` when it beats the current champion.

    settings: tasks.steps.promote_settings.PromoteSettings (or its dict): metric, lower_is_better,
    level, replicates, seed (the paired rule), tolerance (other metrics).
    bucket: the releases bucket; data_dir: the versioned dataset folder the challenger was
    evaluated on; cfg: the run's diffusion.config.Config (its `evaluate` section scores the
    champion); work_dir: scratch space (champion download, score report, release files);
    release_meta: lineage for the model card; flow_run_id: recorded in the history; s3: a boto3
    client (default: from the environment); lease: PromotionLock options (ttl_s, wait_s, ...).

    Holds the model's promotion lock throughout (waiting for another promoter first), scores
    the champion on `data_dir`, decides, and on a win writes and verifies the release and moves
    `champion`; records the decision as version tags and as a history entry either way.
    An unfinished promotion that a failed run left for the model is finished (or rolled back)
    first; when it was this same version's, its outcome is returned.
    Raises PromotionError (a metric missing), ReleaseError, PromotionLockError, RegistryError,
    PromotionInterrupted (a server failed part-way; the decision stays pending)."""
    from tasks.steps.evaluate import score_with_features   # torch and the evaluation stack only when promoting

    s3 = s3 if s3 is not None else s3_client_from_env()
    if isinstance(settings, dict):
        from tasks.steps.promote_settings import PromoteSettings

        settings = PromoteSettings.model_validate(settings)
    version, work = str(challenger.version), Path(work_dir)
    with PromotionLock(s3, bucket, model_name, flow_run_id=flow_run_id, log=log,
                       **(lease or {})) as lock:
        recovered = recover(s3, bucket, model_name, lock, flow_run_id, log)
        if recovered is not None and recovered[0].version == version:
            # this very version's decision, interrupted before (a retried task): it is done now
            return _result(recovered[0], recovered[1])
        previous = champion_version(model_name)
        champion_metrics, comparable, reason, scores = None, True, None, None
        if previous is not None:
            champion_dir = download_model(f"{model_name}/{previous}", work / "champion" / previous)
            reason = _not_comparable(previous, champion_dir, Path(challenger.model_dir))
            if reason is None:
                try:
                    scores = score_with_features(champion_dir, cfg, work / "champion" / "score",
                                                 data_dir=data_dir)
                    champion_metrics = scores.row
                except ModelError as e:
                    reason = (f"champion v{previous} cannot be scored on the challenger's data "
                              f"({e}): not comparable, so not promoted; register models of other "
                              "data under another pipeline.model_name")
        if reason is not None:
            comparable = False
            value = _value(challenger.metrics, settings.metric, "challenger")
            decision = Decision(False, reason, settings.metric, value, outcome=KEEP)
        else:
            difference = None
            if champion_metrics is not None and settings.metric in BOOTSTRAPPED:
                # the challenger's features, scored on the same terms as the champion's
                ours = score_with_features(challenger.model_dir, cfg, work / "challenger" / "score",
                                           data_dir=data_dir)
                difference = paired_interval(
                    ours, scores, settings,
                    _value(challenger.metrics, settings.metric, "challenger"),
                    _value(champion_metrics, settings.metric, "champion"))
            decision = decide(challenger.metrics, champion_metrics, settings.metric,
                              settings.tolerance, settings.lower_is_better, difference)
        files = {}
        if decision.promoted:
            # the release is made from the local folder: it must be the registered bytes
            verify_registered_copy(challenger.model_dir, model_name, version,
                                   source=f"local folder {challenger.model_dir}")
            uri = release_uri(bucket, model_name, version)
            card = model_card(model_name, version, challenger.metrics, release_meta,
                              spec=read_spec(challenger.model_dir), uri=uri)
            files = prepare_release_files(challenger.model_dir, card, challenger.metrics,
                                          work / "release" / version)
        decision, done = _carry_out(decision, model_name, version, files, s3, bucket, lock, {
            "comparable": comparable, "challenger_metrics": _plain(challenger.metrics),
            "champion_metrics": _plain(champion_metrics)}, flow_run_id, previous)
    if decision.promoted and done.release:
        _describe_released(model_name, version, files, log)
    log(f"promotion: {'promoted' if decision.promoted else 'not promoted'}: {decision.reason}")
    return PromotionResult(decision, previous, champion_metrics, comparable, done.history_key)


def _describe_released(model_name: str, version: str, files: dict, log) -> None:
    """The version's registry description becomes its release's card (which names the release).
    After the promotion is complete, so a server gone now costs only the description: the
    release's README.md is the card of record."""
    try:
        set_descriptions(model_name, version,
                         version_description=Path(files["README.md"]).read_text())
    except ServerUnavailable as e:
        log(f"warning: the description of {model_name} v{version} was not updated to its "
            f"release's card ({e}); the release's README.md has it")


def _result(record: PendingPromotion, done: Completion) -> PromotionResult:
    """The PromotionResult of a decision that a recovery finished."""
    entry = record.entry
    decision = Decision(done.outcome == PROMOTED, done.reason, entry["metric"],
                        entry["challenger_value"], entry.get("champion_value"), done.release,
                        entry.get("outcome"), entry.get("difference"))
    return PromotionResult(decision, record.previous_champion, entry.get("champion_metrics"),
                           bool(entry.get("comparable", True)), done.history_key)
