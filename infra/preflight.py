"""Port checks before the stack starts anything: a clear error beats a server dying on bind."""

from __future__ import annotations

from pathlib import Path

from infra.errors import StackError
from infra.layout import StateLayout
from infra.ports import port_in_use
from infra.processes import PidRecord
from infra.services import ServiceSpec
from infra.settings import ENV_PORTS, StackSettings

# the server behind each public port (StackSettings.public_ports' names), as specs name it
PUBLIC_SERVICE = {"s3": "seaweedfs", "mlflow": "mlflow", "prefect": "prefect", "postgres": "postgres"}


def taken_ports_error(host: str, taken: list[tuple[int, str, str]]) -> StackError | None:
    """One StackError naming every (port, server, how to choose another) in `taken`: ports
    another program holds; None when there is none."""
    if not taken:
        return None
    if len(taken) == 1:
        (port, name, option), = taken
        return StackError(f"port {port} ({name}) on {host} is in use by another program; "
                          f"stop it or choose another port with {option}")
    ports = ", ".join(f"{port} ({name})" for port, name, _ in taken)
    options = ", ".join(option for _, _, option in taken)
    return StackError(f"ports {ports} on {host} are in use by other programs; stop them or choose "
                      f"other ports with {options}")


def check_new_stack_ports(s: StackSettings, services) -> None:
    """Before a state folder that holds no stack yet gets anything (folders, credentials):
    StackError naming every public port of `services` (server names) that another program
    holds -- no server of that folder can be running there."""
    taken = [(port, PUBLIC_SERVICE[name], f"--{name}-port / {ENV_PORTS[f'{name}_port']}")
             for name, port in s.public_ports.items()
             if PUBLIC_SERVICE[name] in services and port_in_use(s.host, port)]
    error = taken_ports_error(s.host, taken)
    if error is not None:
        raise error


def check_ports(s: StackSettings, specs: dict[str, ServiceSpec], running: dict[str, PidRecord],
                layout: StateLayout, bound: dict[str, int] | None = None) -> None:
    """StackError when the public ports clash with each other or with SeaweedFS's internal
    ports, when a running server of this stack uses another port than asked for (or a stopped
    PostgreSQL another port than the running MLflow and Prefect expect it on: `bound`, port
    field -> port, infra/stack.py `_bound_ports`), or when ports of servers about to start
    are taken by another program (every such public port named in one message)."""
    public = s.public_ports        # the team stack's includes PostgreSQL's
    if len(set(public.values())) != len(public):
        options = ", ".join(f"--{name}-port" for name in public)
        raise StackError(f"the stack's ports must differ, got {public}; choose others with {options}")
    internal = {port: name for name, port in specs["seaweedfs"].internal_ports.items()}
    for spec in specs.values():
        if spec.port in internal:
            raise StackError(f"port {spec.port} ({spec.name}) is already SeaweedFS's internal "
                             f"{internal[spec.port]} port in {layout.seaweedfs_ports}; "
                             f"choose another with {spec.port_option}")
    down = "dmops down --team" if s.team else "dmops down"
    for name, record in running.items():
        if record.port != specs[name].port:
            raise StackError(f"{name} of the stack in {layout.root} is running on port {record.port}, "
                             f"not {specs[name].port}; run `{down}` first to change its port")
    expected = (bound or {}).get("postgres_port")
    if "postgres" in specs and "postgres" not in running and expected not in (None, specs["postgres"].port):
        raise StackError(f"postgres of the stack in {layout.root} is stopped, but its MLflow and Prefect "
                         f"run against it on port {expected}, not {specs['postgres'].port}: leave "
                         f"--postgres-port out to bring it back there, or run `{down}` first to change its port")
    taken = []   # every public port another program holds, in one message
    for name, spec in specs.items():
        if name in running:
            continue
        problem = privileged_port_problem(spec.port) if name == "postgres" else None
        if problem:
            raise StackError(f"port {spec.port} (postgres) is {problem} with {spec.port_option}")
        if port_in_use(s.host, spec.port):
            taken.append((spec.port, name, spec.port_option))
    error = taken_ports_error(s.host, taken)
    if error is not None:
        raise error
    for name, spec in specs.items():
        if name in running:
            continue
        for what, port in spec.internal_ports.items():
            if port_in_use(s.host, port):
                raise StackError(f"port {port} (SeaweedFS internal {what} port) on {s.host} is in use "
                                 f"by another program; stop it, or delete {layout.seaweedfs_ports} "
                                 f"so that `dmops up` picks new ports")


def privileged_port_problem(port: int) -> str | None:
    """Why PostgreSQL cannot serve on `port` when it is below the kernel's unprivileged start
    (PostgreSQL never runs as root: as root, the stack runs it as the OS user `postgres`, and
    no other user may bind such a port); None when it can.  The text ("a privileged port ...;
    choose one of N-65535") is for the caller to name the port and its option around."""
    lowest = unprivileged_port_start()
    if port >= lowest:
        return None
    return (f"a privileged port (below {lowest}), which PostgreSQL, run as an unprivileged OS "
            f"user, cannot bind; choose one of {lowest}-65535")


def unprivileged_port_start() -> int:
    """The lowest port a process without privileges may bind (Linux's
    net.ipv4.ip_unprivileged_port_start; 1024 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024
