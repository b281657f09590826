"""Every `maskkit` command line in the README's code blocks parses: its subcommand and options exist
and take the values shown. When an option is renamed or a default changes its spelling, this fails
naming the README line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from maskkit.cli import app

README = Path(__file__).resolve().parent.parent / "README.md"
SHELL_BREAKS = re.compile(r"\|\||&&|[|;&)]|\d?>>?|<(?!\()")  # where a command's own words end
PROCESS_SUBSTITUTION = re.compile(r"<\(([^()]*)\)")
ENV_PREFIX = re.compile(r"^(?:[A-Z_]+=\S+\s+)+")


def code_lines(text: str) -> list[str]:
    """The README's code-block lines, continuation lines joined and `# ...` comments dropped."""
    lines, inside, pending = [], False, ""
    for raw in text.splitlines():
        if raw.startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [line for line in lines if line.strip()]


def maskkit_calls(line: str) -> list[str]:
    """The `maskkit ...` commands of one shell line (pipelines, loops, `<(...)` and torchrun -m included)."""
    inner = PROCESS_SUBSTITUTION.findall(line)
    line = PROCESS_SUBSTITUTION.sub("piped.csv", line)
    calls = []
    for text in [line, *inner]:
        for match in re.finditer(r"(?:^|[\s;(&|])maskkit\s+(?=[a-z-])", text):
            rest = text[match.end():]
            stop = SHELL_BREAKS.search(rest)
            calls.append(ENV_PREFIX.sub("", rest[: stop.start()] if stop else rest).strip())
    return calls


def readme_commands() -> list[str]:
    return [call for line in code_lines(README.read_text()) for call in maskkit_calls(line)]


def brace_expanded(word: str) -> list[str]:
    """Bash's brace expansion of one word: runs/f{0,1} -> runs/f0 runs/f1."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not match:
        return [word]
    return [expanded for part in match.group(1).split(",")
            for expanded in brace_expanded(word[: match.start()] + part + word[match.end():])]


def parse(words: list[str]) -> None:
    """Parse (never run) one command line with the app's own click command; tune's train options too."""
    group = typer.main.get_command(app)
    if words[0].startswith("--"):  # maskkit --install-completion, --version
        group.make_context("maskkit", list(words), resilient_parsing=False)
        return
    command = group.commands.get(words[0])
    assert command is not None, f"no subcommand {words[0]!r}"
    ctx = command.make_context(f"maskkit {words[0]}", list(words[1:]))
    if words[0] == "tune" and ctx.args:  # tune passes the options after MANIFEST on to train
        group.commands["train"].make_context("maskkit train", list(ctx.args))


def test_the_readme_shows_commands_of_most_subcommands():
    used = {call.split()[0] for call in readme_commands()}
    assert {"synth", "split", "train", "predict", "vote", "score", "audit", "runs", "tune", "export",
            "segment", "cam", "demo"} <= used


@pytest.mark.parametrize("call", readme_commands())
def test_every_readme_command_line_parses(call):
    words = [w for word in shlex.split(call) if word != "..." for w in brace_expanded(word)]  # `...` elides options in prose-like lines
    words = [re.sub(r"\$\{?\w+\}?", "0", w) for w in words]  # loop variables ($k, $fold) become a fold number
    try:
        parse(words)
    except click.exceptions.Exit:  # --version, --help
        pass
    except click.ClickException as exc:
        pytest.fail(f"README: `maskkit {call}` does not parse: {exc.format_message()}")
