"""Shared fixtures: small drawn datasets and tiny trained runs, made once per test session, and
one CliRunner."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from helpers import FAST, FOLDS, one_thread
from maskkit.cli import app


@pytest.fixture(scope="session", autouse=True)
def image_cache_folders(tmp_path_factory):
    """The shared image caches (data/cache.py) of this session, its subprocesses included, in a temp folder."""
    import os

    root = tmp_path_factory.mktemp("image_caches")
    saved = {name: os.environ.get(name) for name in ("MASKKIT_CACHE_DIR", "MASKKIT_RAM_CACHE_DIR")}
    os.environ["MASKKIT_CACHE_DIR"], os.environ["MASKKIT_RAM_CACHE_DIR"] = str(root / "disk"), str(root / "ram")
    yield root
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def torch_one_thread():
    """helpers.one_thread as a fixture: `pytestmark = pytest.mark.usefixtures("torch_one_thread")` puts a module on one thread."""
    with one_thread():
        yield


@pytest.fixture(scope="session")
def drawn(tmp_path_factory) -> Path:
    """A small drawn dataset in the competition layout (read-only: copy it before breaking it)."""
    from maskkit.commands import synth
    from maskkit.options import Size

    root = tmp_path_factory.mktemp("drawn") / "data"
    synth.run(root, persons=60, eval_persons=8, size=Size(width=48, height=64), seed=3)
    return root


@pytest.fixture
def drawn_copy(drawn, tmp_path) -> Path:
    """A private copy of the drawn dataset that a test may break on purpose."""
    copy = tmp_path / "data"
    shutil.copytree(drawn, copy)
    return copy


@pytest.fixture(scope="session")
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner):
    """Invoke the maskkit app in-process: cli('split', 'data/train') -> Result (stdout, stderr, exit_code)."""

    def invoke(*args: object):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


@pytest.fixture(scope="session")
def manifest_path(tmp_path_factory, drawn) -> Path:
    """The 4-fold manifest of the shared drawn dataset (fold 0 = validation)."""
    from maskkit.contract.layout import load_train
    from maskkit.contract.manifest import write_manifest
    from maskkit.data.folds import make_manifest

    path = tmp_path_factory.mktemp("manifest") / "manifest.csv"
    write_manifest(make_manifest(load_train(drawn / "train", report=False), FOLDS, 42), path)
    return path


def _trained(tmp_path_factory, manifest_path: Path, name: str, **options) -> Path:
    from maskkit.commands import train
    from maskkit.options import TrainOptions

    with one_thread():
        return train.run(manifest_path, TrainOptions(**{**FAST, **options}), runs_dir=tmp_path_factory.mktemp("runs"),
                     name=name, show_progress=False)


@pytest.fixture(scope="session")
def single_run(tmp_path_factory, manifest_path) -> Path:
    """A trained run: 18-way head, no age regression, class-balanced sampling."""
    return _trained(tmp_path_factory, manifest_path, "single", heads="single", age_weight=0.0, epochs=10, balanced=True)


@pytest.fixture(scope="session")
def multi_run(tmp_path_factory, manifest_path) -> Path:
    """A trained run: mask, gender and age heads with the age-regression branch (weight 0.1)."""
    return _trained(tmp_path_factory, manifest_path, "multi", heads="multi", age_weight=0.1, epochs=10)


# --- the world of the bad-input rows (tests/hostile.py) ------------------------------------------

@pytest.fixture(scope="session")
def pristine(tmp_path_factory, single_run) -> Path:
    """X (a drawn set, with masks), runs/base (the session's trained run), p.csv and q.csv (its
    predictions), folds.csv (a 2-fold manifest of X/train, relative paths). Read-only: tests take `world`."""
    import os

    from maskkit.commands import synth
    from maskkit.commands.predict import run as predict
    from maskkit.contract.files import write_csv
    from maskkit.contract.layout import load_train
    from maskkit.data.folds import make_manifest
    from maskkit.options import Size

    root = tmp_path_factory.mktemp("hostile")
    synth.run(root / "X", persons=30, eval_persons=8, size=Size(width=48, height=64), seed=1, masks=True)
    shutil.copytree(single_run, root / "runs" / "base")
    with one_thread():
        predict(root / "runs" / "base", root / "X" / "eval", out=root / "p.csv", device="cpu", workers=0)
    shutil.copyfile(root / "p.csv", root / "q.csv")
    images = load_train(root / "X" / "train", report=False)
    write_csv(make_manifest(images, 2, 42).assign(path=lambda m: [os.path.relpath(p, root) for p in m["path"]]),
              root / "folds.csv")
    return root


@pytest.fixture
def world(pristine, tmp_path, monkeypatch) -> Path:
    """A private copy of `pristine`, the working directory of the command, torch on one thread."""
    root = tmp_path / "w"
    shutil.copytree(pristine, root)
    monkeypatch.chdir(root)
    with one_thread():
        yield root


@pytest.fixture(scope="session")
def deeplab(tmp_path_factory) -> Path:
    """Random DeepLabV3-mobilenet weights (segment only needs a loadable file here)."""
    import torch
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    path = tmp_path_factory.mktemp("deeplab") / "deeplab.pt"
    torch.manual_seed(0)
    torch.save(deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21).state_dict(), path)
    return path


@pytest.fixture
def read_only(tmp_path) -> Path | None:
    """A folder this process cannot write into (root ignores file modes: /sys is not writable even then)."""
    import os

    if os.geteuid() == 0:
        yield Path("/sys") if os.path.isdir("/sys") and not _writable("/sys") else None
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


def _writable(folder: str) -> bool:
    import os

    try:
        with open(os.path.join(folder, ".maskkit-probe"), "w"):
            pass
    except OSError:
        return False
    os.unlink(os.path.join(folder, ".maskkit-probe"))
    return True


# --- a throw-away PostgreSQL server for tune's --storage tests (issue 30) -------------------------

def _postgres_bin() -> Path | None:
    """The folder of initdb/pg_ctl: on PATH, or Debian's /usr/lib/postgresql/VERSION/bin (newest)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    folders = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
                     if p.parent.parent.name.isdigit() else 0)
    return folders[-1].parent if folders else None


def postgres_missing(reason: str) -> None:
    """Skip on a developer's machine; fail in CI (CI=true), where the PostgreSQL tests must run."""
    import os

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason} (.ci/run installs Debian's postgresql and the test extra)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A PostgreSQL cluster in a temporary folder for this test session: loopback only, a free port, its
    socket in that folder, password login for user `maskkit`; run as the `postgres` (or `nobody`) user
    when the tests run as root (postgres refuses root); stopped at the end even when tests fail.
    Yields (url without database, admin url)."""
    import os
    import pwd
    import socket
    import subprocess
    import tempfile

    bindir = _postgres_bin()
    if bindir is None:
        postgres_missing("no PostgreSQL server binaries (initdb): apt-get install postgresql")
    try:
        import psycopg  # noqa: F401 - the driver SQLAlchemy (>= 2.1) takes for postgresql:// URLs
    except ImportError:
        postgres_missing("no psycopg, the PostgreSQL driver (pip install -e '.[test]')")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="maskkit-pg-"))  # /tmp: pytest's own temp folders are root-only
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        if user is None:
            postgres_missing("running as root and no postgres or nobody user to run the server as")
        os.chown(root, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    password = "pg-s3cret"
    (root / "pw").write_text(password + "\n")
    os.chmod(root / "pw", 0o644)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data, log = root / "data", root / "server.log"

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)

    made = pg(str(bindir / "initdb"), "-D", str(data), "-U", "maskkit", f"--pwfile={root / 'pw'}",
              "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "-E", "UTF8")
    if made.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed: {made.stderr.strip()[-500:]}")
    settings = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50"
    started = pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", settings, "-w", "-t", "60", "start")
    try:
        if started.returncode != 0:
            pytest.fail(f"pg_ctl start failed: {started.stderr.strip()[-300:]} {log.read_text()[-500:]}")
        base = f"postgresql://maskkit:{password}@127.0.0.1:{port}"
        yield base, f"{base}/postgres"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _has_user(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.fixture
def postgres_url(postgres_server, request) -> str:
    """A new, empty database on the session's PostgreSQL server: its postgresql:// URL."""
    import re

    import psycopg

    base, admin = postgres_server
    name = "t_" + re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:50]
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


def pytest_terminal_summary(terminalreporter):
    """One line naming how the tests against the real PostgreSQL server ended, so CI's log shows they ran."""
    outcomes = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            if "postgres" in getattr(report, "nodeid", "") and getattr(report, "when", "call") in ("call", "setup"):
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    if outcomes:
        counts = ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items())
        terminalreporter.write_line(f"tests against a real PostgreSQL study server: {counts}")
