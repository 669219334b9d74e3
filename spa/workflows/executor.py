"""Where the search's candidates are built and measured for quality: executors.

An executor maps a module-level function over a batch of independent tasks and
returns the results in order. The search (:mod:`spa.workflows.search`) sends it
the candidates of one batch (the quantization formats, the combinations with a
pruned model) and measures latency itself, one candidate at a time, on the
machine it runs on: timing two candidates at once on one machine measures the
contention, not the models.

* :class:`LocalExecutor`: in this process (``workers=1``, the default), or a
  pool of ``workers`` local processes (started by ``spawn``: ONNX Runtime's
  thread pools do not survive ``fork``).
* :class:`RayExecutor`: tasks on a Ray cluster (``pip install 'spa[ray]'``):
  ``address="auto"`` joins the cluster this machine is part of, ``"local"``
  starts a local Ray instance with ``workers`` CPUs, anything else is a Ray
  address. Workers must see the files the search writes (its staging folder
  and the input model), as they do on one machine or a shared file system.

The tasks are deterministic (seeded), so every executor returns the same
results for the same seed; only the order in which work happens differs.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol, TypeVar

from spa.errors import UserError

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "make_executor"]

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs ``function`` (module-level, picklable) on each task; results in order."""

    description: str

    def map(self, function: Callable[[T], R], tasks: Sequence[T]) -> list[R]: ...

    def close(self) -> None: ...


class LocalExecutor:
    """This process (``workers=1``) or a pool of ``workers`` spawned processes."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise UserError(f"--workers {workers}: give at least 1")
        self.workers = workers
        self.description = "this process" if workers == 1 else f"{workers} local processes"
        self._pool: ProcessPoolExecutor | None = None

    def map(self, function: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        if self.workers == 1 or len(tasks) < 2:
            return [function(task) for task in tasks]
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        return list(self._pool.map(function, tasks))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class RayExecutor:
    """Tasks as Ray remote functions (one CPU each)."""

    def __init__(self, address: str = "auto", workers: int | None = None) -> None:
        ray = _import_ray()
        self._ray = ray
        self._started = False
        # Ray would otherwise warn about a future change to CUDA_VISIBLE_DEVICES handling.
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
        if not ray.is_initialized():
            # Workers import spa, and the --eval module, from this process's path.
            environment = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
            try:
                if address == "local":
                    ray.init(num_cpus=workers, runtime_env=environment, log_to_driver=False,
                             include_dashboard=False)  # fmt: skip
                else:
                    ray.init(address=address, runtime_env=environment, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise UserError(
                    f"--ray {address}: cannot join a Ray cluster ({first}); start one with "
                    "`ray start --head`, or use --ray local"
                ) from None
            self._started = True
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self.description = f"Ray ({address}, {cpus} CPUs)"
        self._remote: dict[Callable[..., Any], Any] = {}

    def map(self, function: Callable[[T], R], tasks: Sequence[T]) -> list[R]:
        remote = self._remote.get(function)
        if remote is None:
            remote = self._remote[function] = self._ray.remote(num_cpus=1)(function)
        return list(self._ray.get([remote.remote(task) for task in tasks]))

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(workers: int = 1, ray: str | None = None) -> Executor:
    """``ray`` (an address, ``auto`` or ``local``) -> :class:`RayExecutor`;
    else :class:`LocalExecutor` with ``workers`` processes."""
    if ray is not None:
        return RayExecutor(ray, workers if workers > 1 else None)
    return LocalExecutor(workers)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray, which is not installed; pip install 'spa[ray]'") from None
    return ray
