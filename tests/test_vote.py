"""`maskkit vote`: hard and soft ensembles of prediction CSVs, checked against a per-row reference."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from io import StringIO
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from hostile import bad, empty_prob_cell, hard_link_q, header_only_preds, nan_prob_cell, run_bad, soft_sum_three
from maskkit.cli import app

P = [f"p{i}" for i in range(18)]
runner = CliRunner()


def write_preds(path: Path, ids, ans, probs=None) -> Path:
    df = pd.DataFrame({"ImageID": list(ids), "ans": list(ans)})
    if probs is not None:
        df = pd.concat([df, pd.DataFrame(probs, columns=P)], axis=1)
    df.to_csv(path, index=False)
    return path


def random_preds(tmp_path: Path, count: int, rows: int, seed: int = 0) -> tuple[list[Path], list[str], np.ndarray]:
    """`count` prediction files over the same ImageIDs, each in its own shuffled order."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:04d}.jpg" for i in range(rows)]
    probs = rng.dirichlet(np.full(18, 0.3), size=(count, rows))
    files = []
    for j in range(count):
        perm = rng.permutation(rows) if j else np.arange(rows)
        # few classes per row, so hard votes have majorities and ties
        ans = rng.integers(0, 3, rows) * 6
        files.append(write_preds(tmp_path / f"m{j}.csv", [ids[i] for i in perm], ans[perm], probs[j][perm]))
    return files, ids, probs


def invoke(*args: str):
    return runner.invoke(app, ["vote", *map(str, args)])


def output(result) -> pd.DataFrame:
    assert result.exit_code == 0, result.output
    return pd.read_csv(StringIO(result.stdout), dtype={"ImageID": str})


def reference_hard(answers_by_model: list[dict[str, int]], weights: list[float], image: str) -> int:
    """Plain-Python hard vote of one image: most weight wins, ties to the earliest model's class."""
    totals: Counter = Counter()
    for model, w in zip(answers_by_model, weights):
        totals[model[image]] += w
    best = max(totals.values())
    for model in answers_by_model:
        if abs(totals[model[image]] - best) < 1e-9:
            return model[image]
    raise AssertionError("unreachable")


@pytest.mark.parametrize("weights", [None, "3,1,1,1,1", "1,2,1,2,1.5"])
def test_hard_vote_matches_reference_with_ties_and_weights(tmp_path, weights):
    files, ids, _ = random_preds(tmp_path, 5, 300)
    args = [*files] + (["--file-weights", weights] if weights else [])
    got = output(invoke(*args))
    models = [dict(zip(*pd.read_csv(f, dtype={"ImageID": str})[["ImageID", "ans"]].T.values)) for f in files]
    w = [float(v) for v in weights.split(",")] if weights else [1.0] * 5
    expected = [reference_hard(models, w, image) for image in got["ImageID"]]
    assert got["ImageID"].tolist() == ids  # first input's order
    assert got["ans"].tolist() == expected


def test_tie_goes_to_earliest_input_among_tied_classes(tmp_path):
    ids = ["a", "b", "c"]
    f1 = write_preds(tmp_path / "1.csv", ids, [5, 7, 1])
    f2 = write_preds(tmp_path / "2.csv", ids, [9, 9, 2])
    f3 = write_preds(tmp_path / "3.csv", ids, [9, 7, 3])
    f4 = write_preds(tmp_path / "4.csv", ids, [5, 2, 3])
    got = output(invoke(f1, f2, f3, f4))
    # a: 5 and 9 tie 2-2, model 1 said 5; b: 7 wins 2-1; c: 3 wins 2-1 over the first model's 1
    assert got["ans"].tolist() == [5, 7, 3]
    # model 2 first in the list wins the tie on a
    assert output(invoke(f2, f1, f3, f4))["ans"].tolist()[0] == 9
    # a weight breaks the tie the other way
    assert output(invoke(f1, f2, f3, f4, "--file-weights", "1,1.5,1,1"))["ans"].tolist()[0] == 9


def test_soft_vote_is_weighted_mean_and_probs_round_trip(tmp_path):
    files, ids, probs = random_preds(tmp_path, 3, 200, seed=1)
    got = output(invoke(*files, "--soft", "--file-weights", "2,1,1", "--probs"))
    expected = (2 * probs[0] + probs[1] + probs[2]) / 4
    expected /= expected.sum(axis=1, keepdims=True)
    assert list(got.columns) == ["ImageID", "ans", *P]
    np.testing.assert_allclose(got[P].to_numpy(), expected, atol=1e-5)
    assert got["ans"].tolist() == expected.argmax(axis=1).tolist()
    # the averaged file is a prediction CSV: it feeds another vote
    mid = tmp_path / "mid.csv"
    assert invoke(*files, "--soft", "--probs", "-o", mid).exit_code == 0
    again = output(invoke(mid, "--soft", "--probs"))
    plain = output(invoke(*files, "--soft", "--probs"))
    np.testing.assert_allclose(again[P].to_numpy(), plain[P].to_numpy(), atol=1e-5)
    without = output(invoke(*files, "--soft"))
    assert list(without.columns) == ["ImageID", "ans"]


def test_single_input_passes_through(tmp_path):
    files, ids, probs = random_preds(tmp_path, 1, 50, seed=2)
    source = pd.read_csv(files[0], dtype={"ImageID": str})
    hard = output(invoke(files[0]))
    assert hard.equals(source[["ImageID", "ans"]])
    soft = output(invoke(files[0], "--soft", "--probs"))
    np.testing.assert_allclose(soft[P].to_numpy(), probs[0], atol=1e-6)


def test_info_order_and_output_file(tmp_path):
    files, ids, _ = random_preds(tmp_path, 3, 40, seed=3)
    order = list(reversed(ids))
    info = tmp_path / "info.csv"
    pd.DataFrame({"ImageID": order, "ans": 0}).to_csv(info, index=False)
    out = tmp_path / "sub" / "submission.csv"
    result = invoke(*files, "--info", info, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    written = pd.read_csv(out, dtype={"ImageID": str})
    assert written["ImageID"].tolist() == order
    by_id = output(invoke(*files)).set_index("ImageID")["ans"]
    assert written["ans"].tolist() == by_id.loc[order].tolist()


def broken_cases(tmp_path: Path):
    ids = [f"i{k}" for k in range(10)]
    good = write_preds(tmp_path / "good.csv", ids, [1] * 10, np.full((10, 18), 1 / 18))
    cases = {
        "missing rows": write_preds(tmp_path / "short.csv", ids[:7], [1] * 7),
        "extra rows": write_preds(tmp_path / "long.csv", ids + ["x1", "x2"], [1] * 12),
        "duplicate": write_preds(tmp_path / "dup.csv", ids + ["i3"], [1] * 11),
        "bad ans": write_preds(tmp_path / "ans.csv", ids, [1] * 8 + [18, -1]),
        "float ans": write_preds(tmp_path / "float.csv", ids, [1.5] + [1] * 9),
        "no ans": tmp_path / "noans.csv",
    }
    pd.DataFrame({"ImageID": ids}).to_csv(cases["no ans"], index=False)
    return good, cases


@pytest.mark.parametrize("case,count", [("missing rows", "3 rows differ"), ("extra rows", "2 rows differ"),
                                        ("duplicate", "1 rows repeat"), ("bad ans", "2 rows with ans"),
                                        ("float ans", "1 rows with ans"), ("no ans", "missing column")])
def test_mismatches_are_one_line_errors_naming_the_file(tmp_path, case, count):
    good, cases = broken_cases(tmp_path)
    out = tmp_path / "out.csv"
    result = invoke(good, cases[case], "-o", out)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maskkit vote: error: ")
    assert str(cases[case]) in lines[0] and count in lines[0]
    assert not out.exists()


def test_soft_needs_probabilities_and_weights_must_match(tmp_path):
    good, cases = broken_cases(tmp_path)
    no_probs = cases["missing rows"]
    result = invoke(good, no_probs, "--soft")
    assert result.exit_code == 2 and str(no_probs) in result.output and "p0" in result.output
    nan_probs = write_preds(tmp_path / "nan.csv", [f"i{k}" for k in range(10)], [1] * 10,
                            np.vstack([np.full((9, 18), 1 / 18), np.full((1, 18), np.nan)]))
    result = invoke(good, nan_probs, "--soft")
    assert result.exit_code == 2 and "1 rows whose p0..p17 are missing, negative or do not sum to 1" in result.output
    result = invoke(good, good, "--file-weights", "2,1,1")
    assert result.exit_code == 2 and "--file-weights '2,1,1': 3 weights for 2 input files" in result.output
    result = invoke(good, good, "--file-weights", "2,-1")
    assert result.exit_code == 2 and "positive" in result.output
    result = invoke(good, "--probs")
    assert result.exit_code == 2 and "--soft" in result.output


def test_info_mismatch_names_the_input(tmp_path):
    files, ids, _ = random_preds(tmp_path, 2, 20)
    info = tmp_path / "info.csv"
    pd.DataFrame({"ImageID": ids + ["new.jpg"], "ans": 0}).to_csv(info, index=False)
    result = invoke(*files, "--info", info)
    assert result.exit_code == 2
    assert f"{files[0]}: 1 rows differ from {info}" in result.output


# --- bad input ----------------------------------------------------------------------------------

BAD_CALLS = [
    bad("vote -o input", ["vote", "p.csv", "q.csv", "-o", "q.csv"]),
    bad("vote -o the first input", ["vote", "p.csv", "q.csv", "-o", "p.csv"]),
    bad("vote -o hard link of input", ["vote", "p.csv", "q.csv", "-o", "h.csv"], hard_link_q),
    bad("vote -o the --info file", ["vote", "p.csv", "q.csv", "--info", "X/eval/info.csv", "-o", "X/eval/info.csv"]),
    bad("vote -o below a file", ["vote", "p.csv", "-o", "p.csv/v.csv"]),
    bad("vote -o read-only", ["vote", "p.csv", "-o", "{ro}/v.csv"]),
    bad("vote --soft sums to 3", ["vote", "p.csv", "q.csv", "--soft"], soft_sum_three),
    bad("vote one empty file", ["vote", "empty.csv"], header_only_preds),
    bad("vote an empty probability cell", ["vote", "p.csv", "q.csv", "-o", "v.csv"], empty_prob_cell, absent=["v.csv"]),
    bad("vote --soft NaN and inf cells", ["vote", "p.csv", "q.csv", "--soft", "-o", "v.csv"], nan_prob_cell,
        absent=["v.csv"]),
]


@pytest.mark.parametrize("row", BAD_CALLS)
def test_bad_call_is_one_line_and_changes_no_input(cli, world, request, row):
    run_bad(cli, world, request, row)


def test_a_killed_vote_leaves_a_temporary_file_the_next_vote_removes(cli, world):
    """kill -9 during `vote -o v.csv` left `.v.csv.tmp<pid>.csv` forever."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stale = world / f".v.csv.tmp{victim.pid}.csv"
    stale.write_text("ImageID,ans\nhalf a vote")
    victim.kill()  # the writer dies with its temporary file in place, as under kill -9
    victim.wait()
    busy = world / f".v.csv.tmp{os.getppid()}.csv"  # a live process's file is left alone
    busy.write_text("being written")
    result = cli("vote", "p.csv", "q.csv", "-o", "v.csv")
    assert result.exit_code == 0, result.stderr
    assert not stale.exists() and busy.exists()
    assert (world / "v.csv").read_text().startswith("ImageID,ans\n")
