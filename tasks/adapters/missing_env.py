"""What to say when the environment does not name the servers a command needs: which
variables are missing, what each points at, and the fix (start the local stack, export its
settings, or set the team's).  One wording for the CLI (flows/client_env.py), the flow
(flows/pipeline.py) and `dmops reproduce` (tasks/steps/reproduce.py); imports nothing.
`role_fix` is the end of every line about credentials a server refused
(tasks/adapters/servers.py `ServerRefused`): which variables to set, and the team stack's
command that sets them.
"""

from __future__ import annotations

MLFLOW = "MLFLOW_TRACKING_URI"
PREFECT = "PREFECT_API_URL"
S3 = "AWS_ENDPOINT_URL_S3"

# What each variable points at, for messages.
SERVERS = {MLFLOW: "the MLflow tracking server", PREFECT: "the Prefect API",
           S3: "the S3 store's endpoint"}


def _joined(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


# which team role's settings hold each server's variables, best first
_ROLES_FOR = {MLFLOW: ("pipeline", "viewer"), PREFECT: ("pipeline",), S3: ("pipeline", "reader")}
# markers of a team account's settings in a shell (dmops env --team --role ...)
TEAM_MARKERS = ("MLFLOW_TRACKING_USERNAME", "PREFECT_API_AUTH_STRING")


def holds_team_account(environ) -> bool:
    """Whether `environ` holds a team account's settings (TEAM_MARKERS)."""
    return any(environ.get(marker) for marker in TEAM_MARKERS)


def team_roles_for(needed) -> list[str]:
    """The team roles whose settings name every server of `needed` (variable names), the one
    with the least rights last: e.g. S3 alone -> ["pipeline", "reader"]."""
    roles = None
    for name in needed:
        these = _ROLES_FOR.get(name, ("pipeline",))
        roles = list(these) if roles is None else [r for r in roles if r in these]
    return roles or ["pipeline"]


def fix_for_missing(missing, *, partial: bool = False, needed=None, team: bool = False) -> str:
    """The fix for an environment without `missing` (variable names): start the local stack,
    export its settings, or set the team's.  `partial`: other needed variables are set (then the
    local stack is not used as a stand-in, so the fix is to complete or unset them).  `team`:
    the shell holds a team account's settings (TEAM_MARKERS), so the fix is the settings of a
    role that may do this (`needed`: every variable the command needs), said first."""
    names = _joined(missing)
    if team:
        roles = team_roles_for(needed or missing)
        lead = " or ".join(f"`eval \"$(dmops env --team --role {r})\"`" for r in roles)
        return (f"this shell holds a team role's settings without {names}: on the team stack run "
                f"{lead} (a role whose settings name every server this needs), or set {names} to "
                "your team's server")
    if partial:
        return (f"set {names} to your team's server too, or run `eval \"$(dmops env)\"` to point "
                "every client of this shell at the local stack (`dmops up` starts it); on the team "
                "stack only `eval \"$(dmops env --team --role pipeline)\"` sets all of them (the "
                "viewer and reader roles hold one server's settings each)")
    return (f"start the local stack with `dmops up` (dmops finds it by itself), or set {names} "
            "to your team's servers; `eval \"$(dmops env)\"` exports the local stack's settings "
            "into this shell")


def missing_message(missing, present=(), *, why: str = "", team: bool = False) -> str:
    """One line: which variables are not set (and what each names), why that matters here, and
    the fix (`fix_for_missing`; `team`: the shell holds a team account's settings)."""
    what = "; ".join(f"{name} ({SERVERS.get(name, 'a server')})" for name in missing)
    verb = "is" if len(list(missing)) == 1 else "are"
    head = f"{what} {verb} not set"
    if present:
        head += f" while {_joined(present)} {'is' if len(present) == 1 else 'are'}"
    if why:
        head += f", and {why}"
    return f"{head}: {fix_for_missing(missing, partial=bool(present), needed=[*missing, *present], team=team)}"


def role_fix(variables, role: str, alternative: str = "") -> str:
    """The fix for credentials a server refused: set `variables` (names) to an account's that
    may do this; on the team stack `dmops env --team --role <role>` prints them (`alternative`,
    e.g. "`--role viewer` to read only", is added in brackets)."""
    also = f" ({alternative})" if alternative else ""
    variables = list(variables)
    whose = "that" if len(variables) == 1 else "those"
    return (f"set {_joined(variables)} to {whose} of an account that may do this; for the team stack "
            f"run `eval \"$(dmops env --team --role {role})\"`{also}")
