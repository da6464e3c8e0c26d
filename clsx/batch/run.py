"""``batch-predict`` on the engine a job asks for: the local engine or Ray."""

from __future__ import annotations

from clsx.batch.config import ENGINES, BatchPredictConfig, RayOptions
from clsx.batch.local_engine import Progress, batch_predict
from clsx.batch.summary import Summary
from clsx.errors import ClsxError
from clsx.io.outputs import check_parent_directory
from clsx.log import Log, silent


def run_batch_predict(config: BatchPredictConfig, engine: str = "local",
                      ray: RayOptions | None = None, progress: Progress | None = None,
                      log: Log = silent) -> Summary:
    """Classify ``config.input`` into ``config.output`` on ``engine``.

    ``ray`` (None: Ray's defaults) applies to the Ray engine only, and giving it with the
    local engine is refused. ``progress`` is told the rows done; ``log`` gets status lines.
    A model on object storage is fetched into the clsx cache first (once per machine).
    """
    if engine not in ENGINES:
        raise ClsxError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    output = config.output_location()
    if output.is_local:  # before either engine reads IN or starts: OUT must be writable
        check_parent_directory(output.local_path, f"cannot write {output}")
    config = config.with_local_model(log)
    if engine == "ray":
        from clsx.batch.ray_engine import ray_batch_predict

        return ray_batch_predict(config, ray or RayOptions(), progress, log=log)
    if ray is not None:
        raise ClsxError("--address, --num-workers and --gpus-per-worker "
                        "apply to --engine ray only")
    return batch_predict(config, progress, log=log)
