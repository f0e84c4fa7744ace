"""Pipeline step: decide whether the challenger beats the champion, and act on it.

`decide` is pure: it compares one metric of the two, with a relative tolerance that lets a
challenger as good as the champion up to noise win (fresh data, fresh code), and says why in
words.  `apply` makes it true: on a win it FIRST writes the immutable S3 release and only THEN
moves the `champion` alias, so whatever champion points at always has a release; either way the
decision is recorded on the challenger version as tags `promotion` and `promotion_reason`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow.tracking import MlflowClient

from .register_model import CHAMPION, check_tags, version_tags
from .release import ReleaseError, read_manifest, release_uri, sha256_file, write_release


class PromotionError(ValueError):
    """The comparison cannot be made (a metric is missing or not a number)."""


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str
    metric: str
    challenger_value: float
    champion_value: float | None = None
    release_uri: str | None = None


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
           lower_is_better: bool = True) -> Decision:
    """Promote when the challenger's `metric` is no worse than the champion's by more than
    `tolerance` (relative to the champion's magnitude), or when there is no champion yet."""
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise PromotionError(f"tolerance must be a finite number >= 0, got {tolerance}")
    new = _value(challenger, metric, "challenger")
    if champion is None:
        return Decision(True, f"no champion yet: challenger {metric} {new:.4g} becomes the first",
                        metric, new)
    old = _value(champion, metric, "champion")
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
    return Decision(promoted, reason, metric, new, old)


def _same_release(manifest: dict, files: dict[str, Path]) -> bool:
    listed = {entry["path"]: entry["sha256"] for entry in manifest.get("files", [])}
    return listed == {name: sha256_file(Path(path)) for name, path in files.items()}


def apply(decision: Decision, name: str, version: str, release_files: dict[str, Path], s3,
          bucket: str) -> Decision:
    """Act on `decision` for model `name` version `version`: on a win write the release
    (`release_files`: release-relative name -> local file), then move `champion`; record the
    decision as version tags either way.  Returns the decision with its release URI."""
    version = str(version)
    client = MlflowClient()
    tags = {"promotion": "promoted" if decision.promoted else "rejected",
            "promotion_reason": decision.reason}
    if decision.promoted:
        uri = release_uri(bucket, name, version)
        existing = read_manifest(s3, uri)
        if existing is None:
            lineage = version_tags(name, version)
            write_release(s3, bucket, name, version, release_files, {
                "registered_model": name, "version": version, "promotion_reason": decision.reason,
                "metric": decision.metric, "value": decision.challenger_value,
                "tags": {k: v for k, v in lineage.items() if not k.startswith("promotion")}})
        elif not _same_release(existing, release_files):
            # a retried promotion may find its own finished release; anything else is a conflict
            raise ReleaseError(f"release {uri} already exists with other files; releases are "
                               "immutable: register a new version instead")
        decision = replace(decision, release_uri=uri)
        tags["release"] = uri
        client.set_registered_model_alias(name, CHAMPION, version)
    for key, value in check_tags(tags, f"promotion tags of {name}/{version}").items():
        client.set_model_version_tag(name, version, key, value)
    return decision
