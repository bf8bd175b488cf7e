"""Score an archive of images into one Parquet file, on Ray Data: one machine or a Ray cluster.

``predict`` streams well on one machine; past one, skinmole runs on Ray instead of a scheduler of its
own. The paths go into a Ray dataset; a pool of ``workers`` actors (``ScoreBatches``: the model loaded
once per worker) reads and decodes each file with skinmole's own bounded reader and runs
``iter_predict`` on it, so every answer is the one ``predict()`` gives. Each worker reads its files
itself: an unreadable file is an error row, never a failed read task, and no image bytes travel
through Ray's object store. Ray restarts a worker that dies and retries its batch
(``max_restarts``/``max_task_retries``), and only a batch that finished reaches the output.

The output is written by the driver, never in place: finished rows go into numbered part files
(``OUT.parts/``, each written to a temporary name and renamed) every ``CHECKPOINT_ROWS`` rows, and at
the end the old output and the parts are merged into a temporary file renamed over ``OUT``. So an
interrupted run leaves the previous output untouched plus the parts it finished, and running the same
command again skips every input already in either (``resume``); ``overwrite=True`` starts over.
Error rows are scored again on resume (the file may have been fixed or a share remounted).

Ray is the optional ``[scale]`` extra, imported only here and only when a run starts.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from .data import IMAGE_SUFFIXES

CHECKPOINT_ROWS = 2048            # rows per part file: what an interruption can lose at most
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024  # only paths and result rows go through it
WORKER_CPUS = 1                   # each worker reserves one CPU and runs one ONNX Runtime thread
LIST_COLUMNS = ("path", "image")  # the column of a CSV list that holds the paths (first found)
PARTS_SUFFIX = ".parts"


class ScoreError(ValueError):
    """A run that cannot start: no inputs, an unreadable list, or an output of another model."""


# --- inputs ------------------------------------------------------------------------------------------

def list_inputs(source) -> list[str]:
    """The absolute paths that ``source`` names, in order, each once.

    ``source``: a folder (searched recursively for image files, hidden names skipped, sorted), a glob
    pattern (``'archive/**/*.jpg'``), a ``.csv`` file with a ``path`` or ``image`` column, a text
    file with one path per line, or one image file. Relative paths in a list are relative to the
    list's folder. Paths are made absolute (not resolved through symlinks): workers on other nodes
    and a resumed run from another directory name the same file the same way.
    """
    text = os.fspath(source)
    if os.path.isdir(text):
        paths = _folder_images(text)
    elif glob.has_magic(text) and not os.path.exists(text):
        paths = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
    elif os.path.isfile(text) and Path(text).suffix.lower() not in IMAGE_SUFFIXES:
        paths = _listed_paths(Path(text))
    elif os.path.lexists(text):
        paths = [text]  # one image file (unreadable ones become error rows)
    else:
        raise ScoreError(f"{text}: no such file or folder, and no file matches it as a glob pattern")
    if not paths:
        raise ScoreError(f"{text}: no image files found")
    return list(dict.fromkeys(os.path.abspath(p) for p in paths))


def _folder_images(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):  # symlinked folders are not followed, as in predict
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in sorted(files)
                  if not n.startswith(".") and os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES]
    return found


def _listed_paths(listing: Path) -> list[str]:
    base = listing.parent
    try:
        with open(listing, newline="", encoding="utf-8") as f:
            if listing.suffix.lower() == ".csv":
                reader = csv.DictReader(f)
                column = next((c for c in LIST_COLUMNS if c in (reader.fieldnames or [])), None)
                if column is None:
                    raise ScoreError(f"{listing}: a CSV list needs a 'path' or 'image' column "
                                     f"(it has {', '.join(reader.fieldnames or []) or 'none'})")
                entries = [row[column] for row in reader]
            else:
                entries = [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError:
        raise ScoreError(f"{listing}: not a text list of paths (is it an image without an image suffix?)") from None
    except OSError as exc:
        raise ScoreError(f"{listing}: cannot be read ({exc.strerror or exc})") from None
    return [str(base / e) for e in (e.strip() for e in entries) if e]


# --- the output's schema -----------------------------------------------------------------------------

def class_column(name: str) -> str:
    """The column of one class's probability in the differential: ``p_mel``."""
    return f"p_{name}"


def output_schema(class_names: Iterable[str]):
    """One row per input. Probabilities, label and the differential are null for an image the
    quality gate refused and for an error row; the quality columns are null for an error row."""
    import pyarrow as pa

    return pa.schema(
        [("path", pa.string()), ("malignant_probability", pa.float64()), ("label", pa.string()),
         ("threshold", pa.float64())]
        + [(class_column(c), pa.float64()) for c in class_names]
        + [("quality_accepted", pa.bool_()), ("quality_issues", pa.list_(pa.string())),
           ("ood_score", pa.float64()), ("model_name", pa.string()), ("model_version", pa.string()),
           ("model_sha256", pa.string()), ("error", pa.string())]
    )


def result_row(path: str, result, model) -> dict:
    """The output row of one ``iter_predict`` answer (a ``Prediction`` or an ``InvalidImageError``)."""
    row = {"path": path, "threshold": model.threshold, "model_name": model.name,
           "model_version": model.version, "model_sha256": model.answer_sha256}
    if isinstance(result, Exception):
        return {**row, "error": str(result)}
    q = result.quality
    row.update(malignant_probability=result.malignant_probability, label=result.label,
               quality_accepted=q.get("accepted"), quality_issues=[str(i) for i in q.get("issues", [])],
               ood_score=q.get("ood_score"))
    for name, p in (result.diagnosis or {}).items():
        row[class_column(name)] = p
    return row


# --- the workers -------------------------------------------------------------------------------------

class ScoreBatches:
    """A Ray Data worker: loads the model once, then answers batches of paths as Arrow tables.

    Each worker runs one ONNX Runtime thread and decodes inline: a worker is one reserved CPU, and
    the pool size is the parallelism (threads beyond it would fight over the same cores)."""

    def __init__(self, model_source, batch_size: int, threads: int = WORKER_CPUS, engine: str = "auto"):
        from . import load_model

        previous = os.environ.get("SKINMOLE_ONNX_THREADS")
        os.environ["SKINMOLE_ONNX_THREADS"] = str(threads)  # read when the engine is built, at load
        try:
            self.model = load_model(model_source, engine=engine)
        finally:
            if previous is None:
                os.environ.pop("SKINMOLE_ONNX_THREADS", None)
            else:
                os.environ["SKINMOLE_ONNX_THREADS"] = previous
        self.batch_size = batch_size
        self.schema = output_schema(self.model.class_names)

    def __call__(self, batch: dict):
        import pyarrow as pa

        from .predict import iter_predict

        paths = [str(p) for p in batch["path"]]
        answers = iter_predict(paths, self.model, batch_size=self.batch_size, workers=0)
        rows = [result_row(path, result, self.model) for path, result in answers]
        return pa.Table.from_pylist(rows, schema=self.schema)


# --- the output files --------------------------------------------------------------------------------

def parts_folder(output: Path) -> Path:
    """Where a run keeps its finished part files until the final merge: ``OUT.parquet.parts/``."""
    return output.with_name(output.name + PARTS_SUFFIX)


def _existing_files(output: Path) -> list[Path]:
    parts = parts_folder(output)
    found = [output] if output.is_file() else []
    if parts.is_dir():
        found += sorted(parts.glob("part-*.parquet"))
    return found


def _read_done(files: list[Path], schema, model_sha256: str) -> tuple[set[str], set[str]]:
    """(paths with an answer, paths with an error row) in ``files``; a file of another model or
    layout is refused rather than mixed in."""
    import pyarrow.parquet as pq

    done, errors = set(), set()
    for f in files:
        try:
            table = pq.read_table(f, columns=["path", "model_sha256", "error"])
            file_schema = pq.read_schema(f)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise ScoreError(f"{f}: cannot be read as a skinmole score output ({exc}); "
                             "use --overwrite to start over") from None
        if file_schema.names != schema.names:
            raise ScoreError(f"{f}: its columns differ from this model's output (another model or "
                             "skinmole version); use --overwrite or another output")
        shas = set(table.column("model_sha256").to_pylist()) - {None}
        if shas - {model_sha256}:
            raise ScoreError(f"{f}: scored with another model (weights sha256 {sorted(shas)[0][:12]}...); "
                             "use --overwrite or another output")
        for path, error in zip(table.column("path").to_pylist(), table.column("error").to_pylist()):
            (errors if error is not None else done).add(path)
    return done, errors - done


class PartWriter:
    """Finished rows into ``part-NNNNN.parquet`` files of the parts folder, each written under a
    temporary name and renamed when complete, so that a part that exists is a whole part."""

    def __init__(self, folder: Path, schema, rows_per_part: int = CHECKPOINT_ROWS):
        self.folder, self.schema, self.rows_per_part = folder, schema, rows_per_part
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.tmp"):  # an interrupted part: its inputs are scored again
            stale.unlink()
        self.next_index = 1 + max((int(p.stem.split("-")[1]) for p in folder.glob("part-*.parquet")), default=-1)
        self.pending: list = []
        self.pending_rows = 0

    def add(self, table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        if self.pending_rows >= self.rows_per_part:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending_rows:
            return
        final = self.folder / f"part-{self.next_index:05d}.parquet"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(pa.concat_tables(self.pending), tmp)
        os.replace(tmp, final)
        self.next_index += 1
        self.pending, self.pending_rows = [], 0


def _merge(output: Path, schema, old_files: list[Path], drop: set[str]) -> int:
    """Write the output and every part into one file, atomically, and remove the parts; the rows of
    ``drop`` (error rows scored again) are left out of ``old_files``, the files from before this run.
    Returns the number of rows written."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    parts = parts_folder(output)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            keep_old = output in old_files  # not with overwrite
            sources = ([output] if keep_old else []) + sorted(parts.glob("part-*.parquet"))
            for f in sources:
                for batch in pq.ParquetFile(f).iter_batches():
                    table = pa.Table.from_batches([batch]).cast(schema)
                    if drop and f in old_files:
                        keep = pc.invert(pc.is_in(table.column("path"), pa.array(sorted(drop), pa.string())))
                        table = table.filter(keep)
                    writer.write_table(table)
                    rows += table.num_rows
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    shutil.rmtree(parts, ignore_errors=True)
    return rows


# --- the run ---------------------------------------------------------------------------------------

@dataclass
class ScoreReport:
    """What a run did, for the CLI's summary."""

    output: Path
    inputs: int
    skipped: int = 0            # already in the output (or in a finished part of an interrupted run)
    retried_errors: int = 0     # error rows of an earlier run, scored again
    overwritten: bool = False
    scored: int = 0
    errors: int = 0
    refused: int = 0
    rows: int = 0               # rows in the output file at the end
    seconds: float = 0.0
    workers: int = 0


def import_ray():
    """``ray`` with ``ray.data``, or a ``MissingExtraError`` that names the ``[scale]`` extra."""
    from .extras import require

    require("scale", "skinmole score")
    import ray
    import ray.data  # noqa: F401

    return ray


def _start_ray(ray, address: str | None, workers: int | None) -> bool:
    """Join ``address`` or start a local Ray (``workers`` CPUs, no dashboard, a small object store).
    Returns whether this call started it (and so should shut it down). A Ray already initialised in
    this process (a notebook, the tests) is used as it is."""
    if ray.is_initialized():
        return False
    import logging

    if address:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    else:
        ray.init(num_cpus=workers, object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False)
    return True


def _fault_tolerance(ray) -> dict:
    """Restart a dead worker as often as needed and retry its batch there. Passed explicitly where
    ``map_batches`` still takes Ray's remote arguments; later Ray Data versions apply these values
    themselves (and no longer take them)."""
    import inspect

    params = inspect.signature(ray.data.Dataset.map_batches).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return {"max_restarts": -1, "max_task_retries": -1}
    return {}


def _blocks(n: int, workers: int, batch_size: int) -> int:
    """Tasks for ``n`` inputs: one batch each (a retry redoes one batch), at least one per worker."""
    return math.ceil(n / max(1, min(batch_size, math.ceil(n / workers))))


def _dataset(ray, paths: list[str], model_source, workers: int, batch_size: int, engine: str = "auto"):
    import warnings

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ds = ray.data.from_items([{"path": p} for p in paths], override_num_blocks=_blocks(len(paths), workers, batch_size))
    with warnings.catch_warnings():  # the remote arguments' deprecation notice (see _fault_tolerance)
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return ds.map_batches(
            ScoreBatches, fn_constructor_args=(model_source, batch_size, WORKER_CPUS, engine), batch_size=batch_size,
            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=WORKER_CPUS,
            **_fault_tolerance(ray))


def _model_source(model):
    """What a worker loads: a local folder as an absolute path (a worker's directory is not ours)."""
    if model is None:
        return None
    text = os.fspath(model)
    return os.path.abspath(os.path.expanduser(text)) if os.path.exists(os.path.expanduser(text)) else text


def score(source, output, *, model=None, address: str | None = None, workers: int | None = None,
          batch_size: int = 64, overwrite: bool = False,
          progress: Callable[[int, int], None] | None = None, engine: str = "auto") -> ScoreReport:
    """Score every image of ``source`` (see ``list_inputs``) into the Parquet file ``output``.

    ``model``: any ``load_model`` source (each worker loads it: on a cluster, a folder must exist on
    every node, or use a Hub id). ``address``: a Ray cluster to join (else a local Ray with
    ``workers`` CPUs; a Ray already initialised in this process is used as it is). ``workers``:
    the number of model workers (default: one per CPU of the local machine or of the cluster).
    ``progress(done, total)`` is called as batches finish. Resumes by default; ``overwrite``
    starts over. Raises ``ScoreError`` when it cannot start, ``MissingExtraError`` without Ray.
    ``engine``: as for ``load_model`` (``"onnx-int8"``: the folder's int8 model, opt-in).
    """
    from . import load_model
    from .engines import cpu_cores

    started = time.monotonic()
    ray = import_ray()
    output = Path(os.path.abspath(os.path.expanduser(os.fspath(output))))
    if not output.parent.is_dir():
        raise ScoreError(f"{output.parent}: no such folder for the output")
    paths = list_inputs(source)
    source_model = _model_source(model)
    m = load_model(source_model, engine=engine)  # here first: a bad model is one error before any worker starts
    schema = output_schema(m.class_names)
    report = ScoreReport(output=output, inputs=len(paths), overwritten=overwrite and bool(_existing_files(output)))
    if overwrite:  # the old output stays until the new one replaces it; an old run's parts go now
        shutil.rmtree(parts_folder(output), ignore_errors=True)
    old_files = [] if overwrite else _existing_files(output)
    done, errors = _read_done(old_files, schema, m.answer_sha256)
    todo = [p for p in paths if p not in done]
    report.skipped = len(paths) - len(todo)
    report.retried_errors = sum(1 for p in todo if p in errors)

    if todo:
        ours = _start_ray(ray, address, workers or cpu_cores())
        try:
            n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            n_workers = min(n_workers, _blocks(len(todo), n_workers, batch_size))  # no idle workers
            report.workers = n_workers
            writer = PartWriter(parts_folder(output), schema)
            batches = _dataset(ray, todo, source_model, n_workers, batch_size, engine).iter_batches(
                batch_size=None, batch_format="pyarrow")
            try:
                for table in batches:
                    table = table.cast(schema)
                    writer.add(table)
                    report.scored += table.num_rows
                    report.errors += table.num_rows - table.column("error").null_count
                    report.refused += _refused(table)
                    if progress is not None:
                        progress(report.scored, len(todo))
            finally:  # also at an interrupt: the rows that finished are kept for the resume
                writer.flush()
                getattr(batches, "close", lambda: None)()  # stops the workers now, not at garbage collection
        finally:
            if ours:
                ray.shutdown()
    if parts_folder(output).is_dir():
        report.rows = _merge(output, schema, old_files, drop=errors & set(todo))
    else:
        report.rows = _row_count(output)
    report.seconds = time.monotonic() - started
    return report


def _refused(table) -> int:
    import pyarrow.compute as pc

    accepted = table.column("quality_accepted")
    return int(pc.sum(pc.equal(accepted, False)).as_py() or 0)


def _row_count(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows
