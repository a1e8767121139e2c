"""The project's exception root and the exit codes a scheduler can act on.

Every error the stages raise on purpose derives from :class:`CouponSparkError`; the command line
(:func:`coupon_spark.cli.main`) turns one into a single line on stderr and the class's exit code:

====  =====================  ==========================================================================
code  class                  meaning, and what a scheduler should do
====  =====================  ==========================================================================
0                            done (or nothing to do: the run date was already committed)
1     CouponSparkError       the stage failed (a failed commit, a broken invariant): look at the message
2     InputError             bad input or configuration (a wrong key, a bad landing file, no Java, an
                             unwritable lake root): fix it and rerun; retrying as is fails again
75    UpstreamNotReady       what the stage reads for the date is not there yet (no landing files, an
                             upstream table not built for the date): retry later (``EX_TEMPFAIL``)
====  =====================  ==========================================================================

Each class keeps its older base (``ValueError``, ``LookupError``, ...) beside these, so that code catching
those still works.
"""

from __future__ import annotations

EX_FAILED = 1
EX_INPUT = 2
EX_TEMPFAIL = 75  # sysexits.h: "temporary failure, the user is invited to retry"


class CouponSparkError(Exception):
    """The root of the errors the stages raise on purpose; the message says what to do.

    Attributes:
        exit_code: What ``coupon-spark`` exits with when this error stops a stage.
        advice: A few words for the end of the error line (what the exit code means).
        label: Said before the message (``configuration error``), or nothing.
    """

    exit_code: int = EX_FAILED
    advice: str = "the stage failed, -v shows the traceback"
    label: str = ""


class InputError(CouponSparkError):
    """Bad input or configuration: rerunning as is fails again; fix what the message names and rerun."""

    exit_code = EX_INPUT
    advice = "bad input or configuration, fix it and rerun"


class UpstreamNotReady(CouponSparkError):
    """What the stage needs for the date (landing files, an upstream table or model) is not there yet."""

    exit_code = EX_TEMPFAIL
    advice = "upstream not ready, retry later"


class MissingColumnsError(InputError, ValueError):
    """A table or frame lacks columns of its contract (``coupon_spark.schemas``): the message names them and the
    stage that writes them. One class for every stage (the allocator's candidates, the trainer's examples)."""


class NotWritableError(InputError):
    """A folder the stage writes to (the lake root, the landing folder) cannot be written."""


def kind_of(exc: BaseException) -> type[CouponSparkError] | None:
    """The class that decides how ``exc`` is reported: its own when it is one of the project's, else None (not
    ours: a bug or an unexpected failure, which keeps its traceback)."""
    return type(exc) if isinstance(exc, CouponSparkError) else None


def one_line(exc: BaseException, limit: int = 1000) -> str:
    """The message of ``exc`` on one line, at most ``limit`` characters: its lines joined with ``; ``, and of a
    Python traceback inside it (a Spark task's error) only the last line, the error itself."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")), None)
    if start is not None:
        lines = lines[:start] + lines[-1:]
    text = "; ".join(lines) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
