"""``coupon-spark <stage> --conf conf/<env>.yaml [--run-date YYYY-MM-DD]``: one entry point per stage.

The same functions back ``spark-submit jobs/<stage>.py``. Each stage is idempotent for a run date. The stages
and their options are declared in :mod:`coupon_spark.stages`; this module is the only one that reads argparse.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path

from coupon_spark.config import Config
from coupon_spark.errors import CouponSparkError, NotWritableError, kind_of, one_line
from coupon_spark.runner import Context, resolve
from coupon_spark.stages import STAGES, RunOptions, Stage, stage

EXIT_CODES = """\
exit codes:
  0   done (or already done for the run date: nothing to do)
  1   the stage failed (a Delta commit, a broken invariant): the line names the table; -v shows the traceback
  2   bad input or configuration (a config key, a landing file's header, no Java, an unwritable lake root):
      fix what the line names and rerun; rerunning as is fails again
  75  upstream not ready for the run date (no landing files, an upstream table or model not built yet):
      retry later (EX_TEMPFAIL)
Errors of codes 1, 2 and 75 print one line, `coupon-spark <stage>: <what, where, what to run>`; -v adds the
traceback."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the description and the exit-code table kept as written."""


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date as YYYY-MM-DD, found {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coupon-spark",
        description="Personalised coupon allocation on Spark + Delta Lake. Each stage reads and writes Delta\n"
        "tables under the configured lakehouse root.",
        epilog=EXIT_CODES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for s in STAGES:
        p = sub.add_parser(s.name, help=s.help, description=s.help, epilog=EXIT_CODES, formatter_class=HelpFormatter)
        p.add_argument("--conf", default="conf/local.yaml", help="environment configuration file")
        p.add_argument("--run-date", type=_date, default=dt.date.today(), help="run date (UTC), YYYY-MM-DD")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a configuration value, e.g. --set lake.root=/tmp/lake (repeatable)",
        )
        defaults = RunOptions()
        for opt in s.options:
            if opt.kind == "flag":
                p.add_argument(opt.flag, dest=opt.name, action="store_true", help=opt.help)
            else:
                p.add_argument(opt.flag, dest=opt.name, type=int, default=getattr(defaults, opt.name), help=opt.help)
    return parser


def local_path(location: str) -> str | None:
    """The local folder of ``location`` (a path or a ``file:`` URI); None for an object store (``s3a://``)."""
    if location.startswith("file://"):
        return location[len("file://") :]
    if location.startswith("file:"):
        return location[len("file:") :]
    return None if "://" in location else location


def writable_problem(location: str) -> str | None:
    """Why ``location`` cannot be written (created if missing, a file made in it), or None when it can.

    The folder is not created: a probe file is made and removed in it, or in its nearest existing parent
    when it does not exist yet (where the stage would create it). Object stores are not checked.
    """
    local = local_path(location)
    if local is None:
        return None
    target = Path(local)
    existing = target
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder" + ("" if existing == target else f", so {target} cannot be created")
    try:
        fd, probe = tempfile.mkstemp(prefix=".coupon-spark-probe-", dir=existing)
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        where = "" if existing == target else " (its nearest existing parent, where it would be created)"
        return f"cannot create a file in {existing}{where}: {exc.strerror or exc}"
    return None


def preflight(cfg: Config, s: Stage) -> None:
    """Check, before any work, that the folders stage ``s`` writes to can be written.

    Raises:
        NotWritableError: Naming the configuration key, the folder and why (exit code 2).
    """
    targets = [("lake.root", cfg.lake.root)]
    if s.writes_landing:
        targets.append(("lake.landing", cfg.lake.landing))
    for key, location in targets:
        problem = writable_problem(location)
        if problem:
            raise NotWritableError(
                f"{key} {location} is not writable: {problem}. Nothing was run: fix the permissions or point "
                f"{key} at a writable folder (--set {key}=PATH)"
            )


def report(exc: BaseException, kind: type[CouponSparkError], stage: str, verbose: bool) -> int:
    """Print ``exc`` as one line (and, with ``verbose``, its traceback first) on stderr; return its exit code."""
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    label = getattr(exc, "label", "") or kind.label
    prefix = f"{label}: " if label else ""
    print(
        f"coupon-spark {stage}: {prefix}{one_line(exc)} [exit {kind.exit_code}: {kind.advice}]",
        file=sys.stderr,
        flush=True,
    )
    return kind.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # third-party libraries (py4j, Horovod's rendezvous) log at INFO on the root logger: keep them to warnings
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("coupon_spark").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return run_stage(args)
    except Exception as exc:
        kind = kind_of(exc)
        if kind is None:  # not one of ours: a bug or an unexpected failure keeps its traceback
            raise
        return report(exc, kind, args.stage, args.verbose)


def options_of(args: argparse.Namespace) -> RunOptions:
    """The stage's typed options from its parsed arguments (those it does not declare keep their defaults)."""
    return RunOptions(**{o.name: getattr(args, o.name) for o in stage(args.stage).options})


def run_stage(args: argparse.Namespace) -> int:
    """Load the configuration, check the folders, start Spark, run the stage; errors propagate to :func:`main`."""
    cfg = Config.from_file(args.conf, overrides=args.overrides)
    s = stage(args.stage)
    fn = resolve(s)
    preflight(cfg, s)
    from coupon_spark import tfenv

    # before the JVM starts, so that Spark's Python workers (Horovod ranks in local mode) inherit it
    os.environ.update(tfenv.tf_env(os.environ))
    if s.tensorflow:
        tfenv.import_tensorflow(quiet=not args.verbose)
    from coupon_spark.session import build_spark_session

    spark = build_spark_session(cfg.spark, cfg.lake)
    return int(fn(Context(spark, cfg, options_of(args)), args.run_date) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
