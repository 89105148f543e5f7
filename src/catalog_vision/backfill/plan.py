"""Planning a backfill and counting its result on the driver, in Arrow: no Python object per image.

The driver holds the catalog's ``image_id, uri, label`` columns, the ids this model has already
committed for the catalog, and the hash set ``is_in`` builds from them; ``bench/driver_memory.py``
measures what that costs per image and where a head node runs out.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from .. import storage as st
from ..ingest.catalog import catalog_table
from .sink import committed_ids


@dataclasses.dataclass
class Plan:
    rows: pa.Table  # the selected catalog
    todo: pa.Table  # its rows this model has not committed yet

    @property
    def ids(self) -> pa.Array:
        return self.rows.column("image_id").combine_chunks()

    @property
    def skipped(self) -> int:
        return self.rows.num_rows - self.todo.num_rows


def plan_run(data: Mapping[str, Any], storage: Mapping[str, Any] | None, model_dir: str) -> Plan:
    """The catalog, minus what this model has already committed under ``model_dir``."""
    rows = catalog_table(data, storage, split=data.get("split"))
    done = committed_ids(model_dir, storage)
    todo = rows.filter(pc.invert(pc.is_in(rows.column("image_id"), value_set=done))) if len(done) else rows
    return Plan(rows, todo)


def error_classes(errors: pa.Array) -> pa.Array:
    """``"NotAnImage: …"`` → ``"NotAnImage"`` for each error string (null stays null)."""
    return pc.struct_field(pc.extract_regex(errors, r"^(?P<c>[^:]*)"), [0])


def count_files(files: list[str], storage: Mapping[str, Any] | None = None, restrict_to: pa.Array | None = None) -> dict:
    """Counts read back from committed Parquet files (what readers see, not what we meant to write)."""
    if files:
        fs, _ = st.resolve(files[0], storage)
        paths = [st.resolve(f, storage)[1] for f in files]
        table = pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=["image_id", "error"])
        if restrict_to is not None:
            table = table.filter(pc.is_in(table.column("image_id"), value_set=restrict_to))
    else:
        table = pa.table({"image_id": pa.array([], pa.string()), "error": pa.array([], pa.string())})
    errors = table.column("error").combine_chunks()
    n_errors = len(errors) - errors.null_count
    by_class = {v["values"]: v["counts"] for v in pc.value_counts(error_classes(errors.drop_null())).to_pylist()} if n_errors else {}
    return {
        "rows": table.num_rows,
        "predicted": table.num_rows - n_errors,
        "errors": n_errors,
        "errors_by_class": dict(sorted(by_class.items())),
        "distinct_image_ids": pc.count_distinct(table.column("image_id")).as_py(),
        "files": len(files),
    }


# batches_per_task=auto: an actor task carries about this many bytes of decoded pixels (whole batches).
TASK_BYTES = 4 * 2**20
# ...but at least this many tasks per actor, so the actors finish together (no long last task).
MIN_TASKS_PER_ACTOR = 4


def batches_per_task(setting: Any, batch_size: int, image_bytes: int, rows: int, actors: int) -> int:
    """Batches of ``batch_size`` images in one predictor-actor task (``predictor.batches_per_task``)
    when the actors fetch and decode: each task is then ``batches × batch_size`` catalog rows.

    Every task costs a round trip through Ray Data's scheduler and the object store, whatever its
    size: for small images a single batch is too little work to hide it (28x28 PNGs at 512 per
    batch: ~0.1 s of work). ``auto`` gives a task about :data:`TASK_BYTES` of decoded pixels, but
    no fewer than :data:`MIN_TASKS_PER_ACTOR` tasks per actor; a number is taken as it is."""
    check_batches_per_task(setting)
    if setting not in (None, "auto"):
        return setting
    by_bytes = TASK_BYTES // max(1, batch_size * image_bytes)
    by_count = rows // max(1, batch_size * actors * MIN_TASKS_PER_ACTOR)
    return max(1, min(by_bytes, by_count))


def check_batches_per_task(setting: Any) -> None:
    if setting not in (None, "auto") and (isinstance(setting, bool) or not isinstance(setting, int) or setting < 1):
        raise ValueError(f"predictor.batches_per_task={setting!r}; choose auto or a positive whole number of batches")
