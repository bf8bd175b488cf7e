"""``skinmole score SOURCE --output OUT.parquet``: score an archive of images on Ray Data.

Parses the arguments and calls ``skinmole.score.score``; says what was skipped (resume), retried or
overwritten, and ends with one summary line. Needs the ``[scale]`` extra. Exit 0 when every input
was read, 2 when any was unreadable (its error row is in the output), the model could not be
loaded or the run could not start, 1 for any other failure, 130 at Ctrl-C (the finished rows are
kept: run the same command again to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from . import ENGINE_CHOICES, ENGINE_HELP, EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREADABLE, positive_int

PROGRESS_EVERY_S = 10.0

EXAMPLES = """\
examples:
  skinmole score archive/ --output scores.parquet                 every image under archive/, local Ray
  skinmole score 'archive/**/*.jpg' -o scores.parquet --workers 8 a glob, 8 model workers
  skinmole score list.csv -o scores.parquet                       a CSV with a 'path' or 'image' column
  skinmole score archive/ -o scores.parquet --address HEAD:6379   on a Ray cluster

Re-running with the same output skips the inputs already scored (error rows are scored again);
--overwrite starts over. Output: one row per input (path, malignant_probability, label, threshold,
p_<class> per class, quality_accepted, quality_issues, ood_score, model_name, model_version,
model_sha256, error)."""


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Score an archive of images into one Parquet file, on Ray Data "
                                            "(a local Ray, or a cluster with --address).")
    p.add_argument("source", metavar="SOURCE",
                   help="a folder (searched recursively), a glob pattern (quote it), a .csv list with a "
                        "'path' or 'image' column, a text file with one path per line, or one image")
    p.add_argument("--output", "-o", required=True, metavar="OUT.parquet", help="the Parquet file to write")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="join the Ray cluster at ADDR (HEAD:6379, or 'auto'); default: start a local Ray")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="model workers, one CPU each (default: every CPU of this machine or the cluster)")
    p.add_argument("--model", metavar="SOURCE", default=None,
                   help="a model folder (on every node) or a Hugging Face repo id ORG/NAME (default: bundled)")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="images per model call (default 64)")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="auto",
                   help=ENGINE_HELP)
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming an existing output")
    return p


class _Progress:
    """``N/TOTAL images`` on stderr every few seconds."""

    def __init__(self):
        self.last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_EVERY_S or done == total:
            print(f"skinmole score: {done:,}/{total:,} images", file=sys.stderr, flush=True)
            self.last = now


def main(argv=None, prog: str | None = None) -> int:
    args = parser(prog).parse_args(argv)
    from ..errors import MissingExtraError, ModelLoadError
    from ..score import ScoreError, import_ray, parts_folder, score

    say = lambda text: print(f"skinmole score: {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        import_ray()
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-run notices; the summary says it all
        report = score(args.source, args.output, model=args.model, address=args.address, workers=args.workers,
                       batch_size=args.batch_size, overwrite=args.overwrite, progress=_Progress(),
                       engine=args.engine)
    except MissingExtraError as exc:
        say(str(exc))
        return EXIT_FAILURE
    except (ScoreError, ModelLoadError) as exc:
        say(str(exc))
        return EXIT_UNREADABLE
    except KeyboardInterrupt:
        say(f"interrupted; the finished rows are kept in {parts_folder(Path(args.output).absolute())}: "
            "run the same command again to resume")
        return EXIT_INTERRUPTED
    if report.overwritten:
        say(f"overwrote the earlier results in {report.output}")
    if report.skipped:
        say(f"skipped {report.skipped:,} input(s) already scored in {report.output}")
    if report.retried_errors:
        say(f"scored again {report.retried_errors:,} input(s) that were errors last time")
    if not report.scored:
        say(f"nothing left to score: all {report.inputs:,} input(s) are in {report.output} ({report.rows:,} rows)")
        return EXIT_OK
    say(f"{report.inputs:,} input(s): {report.scored:,} scored by {report.workers} worker(s) in "
        f"{report.seconds:.0f} s ({report.scored / max(report.seconds, 1e-9):.1f} images/s), {report.refused:,} "
        f"refused by the quality gate, {report.errors:,} unreadable; {report.rows:,} rows in {report.output}")
    return EXIT_UNREADABLE if report.errors else EXIT_OK
