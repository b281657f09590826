"""completions/ holds the shell completion scripts generated from the app; they must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer._completion_shared import get_completion_script

COMPLETIONS = Path(__file__).resolve().parent.parent / "completions"
SHELLS = {"bash": "maskkit.bash", "zsh": "_maskkit", "fish": "maskkit.fish"}


def completion_script(shell: str) -> str:
    return get_completion_script(prog_name="maskkit", complete_var="_MASKKIT_COMPLETE", shell=shell)


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_completion_scripts_match_the_app(shell):
    script = completion_script(shell)
    committed = (COMPLETIONS / SHELLS[shell]).read_text()
    assert committed.strip() == script.strip(), (
        f"completions/{SHELLS[shell]} drifted: regenerate with "
        "with `python tests/test_completions.py`"
    )


def test_completion_lists_the_subcommands(tmp_path):
    import os
    import subprocess
    import sys

    from typer.main import get_command

    from maskkit.cli import app

    def complete(words: str) -> list[str]:
        env = dict(os.environ, _MASKKIT_COMPLETE="complete_bash", COMP_WORDS=words, COMP_CWORD="1")
        return subprocess.run([sys.executable, "-m", "maskkit"], env=env, capture_output=True, text=True).stdout.split()

    assert sorted(complete("maskkit ")) == sorted(get_command(app).commands)  # every subcommand, nothing else
    assert complete("maskkit sp") == ["split"]


if __name__ == "__main__":  # regenerate completions/
    for shell, name in SHELLS.items():
        (COMPLETIONS / name).write_text(completion_script(shell))


@pytest.mark.parametrize("words, expected", [
    ("maskkit train --aug ", {"none", "basic", "strong", "randaugment", "trivialaugment", "augmix"}),
    ("maskkit train --sched co", {"cosine", "constant"}),
    ("maskkit segment in out --fill g", {"gray"}),
    ("maskkit cam run img --head mask,ge", {"mask,gender"}),
    ("maskkit train --backbone lit", {"lite0", "lite1", "lite2"}),  # the aliases
    ("maskkit train --backbone conv", {"convnext_tiny"}),  # a few timm names beside them
    ("maskkit train --crop c", {"competition"}),
    ("maskkit runs --columns name,oof_f1_", {"name,oof_f1_mask", "name,oof_f1_gender", "name,oof_f1_age"}),
])
def test_choice_options_complete_their_values(words, expected):
    import os
    import subprocess
    import sys

    env = dict(os.environ, _MASKKIT_COMPLETE="complete_bash", COMP_WORDS=words,
               COMP_CWORD=str(len(words.split(" ")) - 1))
    result = subprocess.run([sys.executable, "-m", "maskkit"], env=env, capture_output=True, text=True)
    assert set(result.stdout.split()) == expected, result.stdout + result.stderr
