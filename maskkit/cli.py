"""The `maskkit` command line: parses options and calls one module per subcommand.

Logic lives in the subcommand modules; this file only declares options, turns errors into
one-line messages with DESIGN.md's exit codes, and imports heavy modules lazily so `--help` is fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import List, Optional

import typer

from maskkit import __version__
from maskkit.errors import MaskkitError

app = typer.Typer(
    name="maskkit",
    help="Toolkit for mask / gender / age face-classification competitions (18 classes, macro F1).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


@contextlib.contextmanager
def reported(command: str) -> Iterator[None]:
    """Turn MaskkitError into one line on stderr and its exit code; Ctrl-C into exit 130."""
    try:
        yield
    except MaskkitError as exc:
        typer.echo(f"maskkit {command}: error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo(f"maskkit {command}: interrupted", err=True)
        raise typer.Exit(130) from None


def parse_size(text: str, option: str) -> tuple[int, int]:
    """'384x512' -> (384, 512); a bad value is a usage error."""
    try:
        first, second = (int(v) for v in text.lower().split("x"))
        if first <= 0 or second <= 0:
            raise ValueError
    except ValueError:
        raise MaskkitError(f"{option} {text!r}: expected two positive integers like 384x512") from None
    return first, second


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"maskkit {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Toolkit for mask / gender / age face-classification competitions (18 classes, macro F1).

    Subcommands read and write plain files so they chain in a shell:
    synth -> split -> train -> predict -> vote (see the README for the whole pipeline).
    """


# --- synth (issue 2) ---------------------------------------------------------------------------
# --- end synth ---

# --- split (issue 2) ---------------------------------------------------------------------------
# --- end split ---

# --- train / predict / runs / demo (issue 3) ---------------------------------------------------
# --- end train ---

# --- vote / audit (issue 4) --------------------------------------------------------------------
# --- end vote ---

# --- segment (issue 5) -------------------------------------------------------------------------
# --- end segment ---

# --- cam (issue 5) -----------------------------------------------------------------------------
# --- end cam ---


def main() -> None:
    app(prog_name="maskkit")


if __name__ == "__main__":
    main()
