"""Which PostgreSQL installation the project's server runs from, and as which OS user.

The server binaries are the machine's (Debian's `postgresql` package: /usr/lib/postgresql/<major>/bin,
with the contrib modules that Prefect's migrations need), or those of $DMOPS_POSTGRES_BIN. As root,
initdb and postgres (which refuse root) run as an unprivileged OS user, `postgres` by default."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Optional

from infra.errors import StackError

ENV_BIN = "DMOPS_POSTGRES_BIN"
ENV_OS_USER = "DMOPS_POSTGRES_OS_USER"
DEBIAN_BINS = Path("/usr/lib/postgresql")      # <major>/bin, one per installed server version


def find_bin_dir(cluster_major: Optional[int] = None) -> Path:
    """The PostgreSQL bin folder (holding `initdb` and `postgres`): $DMOPS_POSTGRES_BIN; else,
    for an existing cluster, Debian's folder of the cluster's own major version; else the
    newest of Debian's /usr/lib/postgresql/<major>/bin; else the folder of `initdb` on PATH.

    Raises StackError naming the fix when none holds both programs."""
    def complete(folder: Path) -> bool:
        return all(os.access(folder / tool, os.X_OK) for tool in ("initdb", "postgres"))

    if os.environ.get(ENV_BIN):
        folder = Path(os.environ[ENV_BIN]).expanduser()
        if not complete(folder):
            raise StackError(f"{ENV_BIN}={os.environ[ENV_BIN]} holds no executable initdb and postgres: "
                             f"point it at a PostgreSQL server's bin folder, or unset it to use the machine's")
        return folder
    debian = sorted((p / "bin" for p in DEBIAN_BINS.glob("*") if p.name.isdigit() and complete(p / "bin")),
                    key=lambda b: int(b.parent.name), reverse=True)
    own = [b for b in debian if cluster_major is not None and b.parent.name == str(cluster_major)]
    if own or debian:
        return (own or debian)[0]
    initdb = shutil.which("initdb")
    if initdb and complete(Path(initdb).parent):
        return Path(initdb).parent
    raise StackError(f"PostgreSQL server binaries (initdb, postgres) not found in {DEBIAN_BINS}/<version>/bin or "
                     f"on PATH: install the server (`sudo apt-get install -y postgresql`, which `make team` and `make test` run "
                     f"as root), or set {ENV_BIN} to a PostgreSQL bin folder")


def server_major(bin_dir: Path) -> int:
    """The major version of `bin_dir/postgres` (`postgres --version`: "postgres (PostgreSQL) 15.18
    (Debian 15.18-0+deb12u1)")."""
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True,
                         timeout=30).stdout
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    if not match:
        raise StackError(f"{bin_dir / 'postgres'} --version said {out.strip()!r}, not a PostgreSQL "
                         f"version; set {ENV_BIN} to a PostgreSQL bin folder")
    return int(match.group(1))


def os_user() -> Optional[pwd.struct_passwd]:
    """The OS account the server runs as: None (this process's own) unless we are root, then
    $DMOPS_POSTGRES_OS_USER or `postgres`. StackError when that account does not exist."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get(ENV_OS_USER) or "postgres"
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise StackError(f"PostgreSQL refuses to run as root and the OS user {name!r} it would run as does "
                         f"not exist: install Debian's postgresql package (which makes it), create it "
                         f"(`useradd --system --no-create-home {name}`) or name another with {ENV_OS_USER}") from None


def unreachable_folder(path: Path, user: pwd.struct_passwd) -> Optional[Path]:
    """The first folder from / down to `path` (inclusive) that `user` may not enter (no x
    permission for it as owner, group member or other); None when every one is open."""
    import grp

    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for folder in [*reversed(path.parents), path]:
        st = folder.stat()
        bit = (stat.S_IXUSR if st.st_uid == user.pw_uid
               else stat.S_IXGRP if st.st_gid in groups else stat.S_IXOTH)
        if not st.st_mode & bit:
            return folder
    return None
