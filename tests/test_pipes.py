"""Issue 16 item 1 (and issue 17 item 7's stdout): the Unix I/O rule of docs/formats.md ("Streams"),
through real shell pipes, FIFOs and process substitution, with the real `maskkit` in a subprocess.

The prediction CSVs are random probabilities written by contract/predictions' writer (no training),
3000 rows each, so a whole vote is larger than a pipe's buffer and `| head` really closes the pipe
before the writer is done.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROWS = 3000
MASKKIT = f"{shlex.quote(sys.executable)} -m maskkit"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """a.csv and b.csv (two prediction CSVs of the same images), truth.csv, and d (a tiny drawn set)."""
    from maskkit.commands import synth
    from maskkit.options import Size
    from maskkit.contract.predictions import prediction_frame, write_predictions

    root = tmp_path_factory.mktemp("pipes")
    ids = [f"{i:05x}.jpg" for i in range(ROWS)]
    for name, seed in (("a", 1), ("b", 2)):
        probs = np.random.default_rng(seed).dirichlet(np.ones(18), ROWS)
        write_predictions(prediction_frame(ids, probs), root / f"{name}.csv")
    truth = np.random.default_rng(3).integers(0, 18, ROWS)
    pd.DataFrame({"ImageID": ids, "ans": truth}).to_csv(root / "truth.csv", index=False)
    synth.run(root / "d", persons=6, eval_persons=1, size=Size(width=32, height=32), seed=1)
    return root


def sh(script: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run a bash script with `maskkit` meaning this checkout's package; `set -o pipefail` is off,
    and each script echoes the PIPESTATUS it needs."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    script = f"maskkit() {{ {MASKKIT} \"$@\"; }}\n{script}"
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def statuses(result: subprocess.CompletedProcess) -> list[int]:
    """The exit codes the script printed last as `rc=A B C`."""
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("rc=")][-1]
    return [int(code) for code in line[3:].split()]


def no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr


@pytest.mark.slow
def test_stdin_chains_vote_into_score(world):
    """The issue's pipeline: `cat a.csv | maskkit vote - b.csv --soft | maskkit score - truth.csv`."""
    piped = sh("cat a.csv | maskkit vote - b.csv --soft | maskkit score - truth.csv 2>/dev/null; "
               "echo rc=${PIPESTATUS[*]}", world)
    files = sh("maskkit vote a.csv b.csv --soft -o v.csv && maskkit score v.csv truth.csv 2>/dev/null", world)
    assert statuses(piped) == [0, 0, 0], piped.stderr
    row, expected = piped.stdout.splitlines()[1].split(","), files.stdout.splitlines()[1].split(",")
    assert row[0] == "-" and row[1:] == expected[1:] and row[1] == str(ROWS)


@pytest.mark.slow
def test_process_substitution_and_dev_stdin_are_read_as_streams(world):
    result = sh("maskkit vote <(cat a.csv) /dev/stdin < b.csv > v1.csv; echo rc=$?; "
                "maskkit vote a.csv b.csv > v2.csv; cmp v1.csv v2.csv && echo same", world)
    assert statuses(result) == [0] and "same" in result.stdout, result.stderr


@pytest.mark.slow
def test_stdin_named_twice_is_one_line_exit_2(world):
    result = sh("maskkit vote - - < a.csv; echo rc=$?; maskkit vote - /dev/stdin < a.csv; echo rc=$?", world)
    assert "rc=2" in result.stdout and statuses(result) == [2]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("maskkit vote: error: ") for line in lines)
    assert "given twice" in lines[0] and "the same stream as -" in lines[1]


def test_output_to_dev_stdout_through_head_does_not_hang(world):
    """`-o /dev/stdout | head -2`: never read (it hung), written straight through; a quiet end."""
    result = sh("timeout 20 maskkit vote a.csv b.csv --soft --probs -o /dev/stdout | head -2; "
                "echo rc=${PIPESTATUS[*]}", world, timeout=60)
    assert statuses(result)[0] in (0, 141), result.stderr  # 124 = killed by timeout
    assert result.stdout.splitlines()[0].startswith("ImageID,ans,p0,") and len(result.stdout.splitlines()) == 3
    assert result.stderr == ""


@pytest.mark.slow
def test_output_to_dev_null_and_to_a_fifo(world):
    result = sh("maskkit vote a.csv b.csv -o /dev/null; echo rc=$?; "
                "maskkit split d/train --folds 2 -o /dev/null 2>/dev/null; echo rc=$?; "
                "rm -f fifo; mkfifo fifo; cat fifo > got.csv & maskkit vote a.csv b.csv -o fifo; echo rc=$?; wait; "
                "maskkit vote a.csv b.csv | cmp - got.csv && echo same", world)
    codes = [int(line[3:]) for line in result.stdout.splitlines() if line.startswith("rc=")]
    assert codes == [0, 0, 0] and "same" in result.stdout, result.stderr


def test_a_reader_that_stops_early_ends_the_writer_quietly(world):
    """`| head -1` on stdout: exit 141 (128 + SIGPIPE, as cat or seq), nothing on stderr."""
    result = sh("maskkit vote a.csv b.csv --soft --probs | head -1; echo rc=${PIPESTATUS[*]}", world)
    assert statuses(result) == [141, 0]
    assert result.stdout.startswith("ImageID,ans,p0,") and result.stderr == ""


@pytest.mark.slow
def test_a_broken_stderr_keeps_the_file_output(world):
    """`split ... -o f.csv 2>&1 | head -1`: the messages are lost, the manifest is not (it was exit 1, no file)."""
    result = sh("maskkit split d/train --folds 2 -o f.csv 2>&1 | head -1; echo rc=${PIPESTATUS[*]}; "
                "maskkit split d/train --folds 2 2>/dev/null | cmp - f.csv && echo same", world)
    assert statuses(result) == [0, 0] and "same" in result.stdout, result.stderr


@pytest.mark.slow
def test_stdout_closed_or_full_is_one_line(world):
    """Issue 17 item 7: `>&-` was an AttributeError, `> /dev/full` an OSError traceback."""
    closed = sh("maskkit vote a.csv b.csv >&-; echo rc=$? >&2", world)
    assert closed.stderr.strip().splitlines()[-1] == "rc=2"
    no_traceback(closed)
    assert closed.stderr.startswith("maskkit vote: error: standard output is closed")
    full = sh("maskkit vote a.csv b.csv > /dev/full; echo rc=$?", world)
    assert statuses(full) == [1]
    no_traceback(full)
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maskkit vote: error: standard output: cannot write: no space left")


@pytest.mark.slow
def test_split_fixes_and_audit_manifest_read_from_pipes(world):
    """--fixes and --manifest take `-` and `<(...)` like any CSV input."""
    result = sh("printf 'target,column,old,new,reason\\n' | maskkit split d/train --folds 2 --fixes - -o f1.csv "
                "2>/dev/null; echo rc=$?; maskkit split d/train --folds 2 -o f2.csv 2>/dev/null; cmp f1.csv f2.csv "
                "&& echo same; maskkit audit d/train --manifest <(cat f2.csv) -o s.csv 2>/dev/null; echo rc=$?", world)
    codes = [int(line[3:]) for line in result.stdout.splitlines() if line.startswith("rc=")]
    assert codes == [0, 0] and "same" in result.stdout, result.stderr
    assert (world / "s.csv").read_text().startswith("target,column,")


@pytest.mark.slow
@pytest.mark.parametrize("command", ["vote - {a}", "score - {truth}", "split {d}/train --folds 2 -o {out}"])
def test_sigterm_is_one_line_exit_143_and_leaves_no_temporary(world, tmp_path, command):
    """kill PID (SIGTERM) stops any command as Ctrl-C does: one line, exit 143, no temporary file left
    (here while each waits on a stdin that never ends, or writes to a FIFO nobody reads)."""
    import signal
    import time

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    words = shlex.split(command.format(a=world / "a.csv", truth=world / "truth.csv", d=world / "d", out=fifo))
    job = subprocess.Popen([sys.executable, "-m", "maskkit", *words], cwd=tmp_path, stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # past the imports: waiting on stdin or on the FIFO's reader
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 143, err
    assert err.strip().splitlines()[-1].endswith("interrupted (SIGTERM)") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.csv"]


@pytest.mark.slow
@pytest.mark.parametrize("command, expected", [
    ("mkdir -p r && echo '{}' > r/config.json && maskkit predict r - <&-", "-: standard input is closed"),
    ("maskkit runs . >&-", "standard output is closed")], ids=["predict-stdin-closed", "runs-stdout-closed"])
def test_a_closed_stdin_or_stdout_is_one_line_exit_2(tmp_path, command, expected):
    """Issue 31 item 15: `predict RUN - <&-` and `runs DIR >&-` were AttributeError tracebacks."""
    result = sh(f"{command}; echo rc=$? >&2", tmp_path)
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "rc=2" and len(lines) == 2, result.stderr
    no_traceback(result)
    assert expected in lines[0], result.stderr
