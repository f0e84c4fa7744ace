"""Port checks before the stack starts anything: a clear error beats a server dying on bind."""

from __future__ import annotations

from infra.errors import StackError
from infra.layout import StateLayout
from infra.ports import port_in_use
from infra.processes import PidRecord
from infra.services import ServiceSpec
from infra.settings import StackSettings


def check_ports(s: StackSettings, specs: dict[str, ServiceSpec], running: dict[str, PidRecord],
                layout: StateLayout) -> None:
    """StackError when the public ports clash with each other or with SeaweedFS's internal
    ports, when a running server of this stack uses another port than asked for, or when a
    port of a server about to start is taken by another program."""
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
    for name, record in running.items():
        if record.port != specs[name].port:
            raise StackError(f"{name} of the stack in {layout.root} is running on port {record.port}, "
                             f"not {specs[name].port}; run `dmops down` first to change its port")
    for name, spec in specs.items():
        if name in running:
            continue
        if port_in_use(s.host, spec.port):
            raise StackError(f"port {spec.port} ({name}) on {s.host} is in use by another program; "
                             f"stop it or choose another port with {spec.port_option}")
        for what, port in spec.internal_ports.items():
            if port_in_use(s.host, port):
                raise StackError(f"port {port} (SeaweedFS internal {what} port) on {s.host} is in use "
                                 f"by another program; stop it, or delete {layout.seaweedfs_ports} "
                                 f"so that `dmops up` picks new ports")
