"""Errors that reach the user as one line and an exit code (docs/formats.md, "Streams and exit codes")."""


class MaskkitError(Exception):
    """Bad usage or bad input: one line naming the file and the fix, exit code 2."""

    exit_code = 2


class RunFailure(MaskkitError):
    """A failure while running (not the user's input): exit code 1."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a scheduler's stop, torchrun ending its workers): handled as Ctrl-C is (temporaries
    removed, locks released, "interrupted"), with the exit code 143 of a terminated process."""

    exit_code = 143
