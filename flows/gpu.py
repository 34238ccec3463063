"""GPU stages queue for the accelerator and get their device — wiring only, no torch.

Which stages need an accelerator is declared once, next to the stage contract (``tasks.stage.ACCELERATOR_STAGES``).
Here the flow turns that into placement:

* **Queue.** A GPU stage holds one slot of the Prefect global concurrency limit ``gpu`` while it runs; CPU stages
  never touch it. The limit is created (idempotently) with one slot per visible device, so two loops started on one
  GPU box run their GPU stages one after the other while their CPU stages overlap. The limit lives on the Prefect
  server, so loops on several machines that share a server share it too — give it the number of GPUs *per node*
  only when every node runs its own server.
* **Placement.** Inside its slot a stage claims one device with a machine-wide lock file
  (``SYNTHLOOP_GPU_LOCK_DIR``; one file per device) and runs with ``CUDA_VISIBLE_DEVICES`` set to it, so with several
  GPUs two stages never share one. A slot says *how many* may run, the lock says *which* device: Prefect's
  slots are anonymous.
* **Devices.** ``SYNTHLOOP_GPU_DEVICES`` (comma list, e.g. ``0,1``; also how tests fake devices) or, when unset, the
  GPUs ``nvidia-smi -L`` lists. None → the honest fallback: every stage runs on the CPU, no slot is taken, and the
  flow log says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.stage import needs_accelerator

log = logging.getLogger(__name__)

GPU_LIMIT = "gpu"
DEVICES_ENV = "SYNTHLOOP_GPU_DEVICES"
LOCK_DIR_ENV = "SYNTHLOOP_GPU_LOCK_DIR"


def visible_devices() -> list[str]:
    """The GPU ids this machine offers to stages: ``SYNTHLOOP_GPU_DEVICES``, else ``nvidia-smi -L``, else none."""
    declared = os.environ.get(DEVICES_ENV)
    if declared is not None:
        return [d.strip() for d in declared.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], text=True, capture_output=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def lock_dir() -> Path:
    """Machine-wide folder of the per-device lock files (shared by every checkout on the machine)."""
    return Path(os.environ.get(LOCK_DIR_ENV) or Path.home() / ".cache" / "synthloop" / "gpu-locks")


def ensure_gpu_limit(slots: int) -> int:
    """Create the ``gpu`` concurrency limit with ``slots`` slots unless it exists; return the limit in force.

    An existing limit is left as it is (an operator may have set it on purpose), with a warning when it differs.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=GPU_LIMIT, limit=slots))
                log.info("created the Prefect concurrency limit %r with %d slot(s)", GPU_LIMIT, slots)
                return slots
            except ObjectAlreadyExists:  # another loop created it between our read and our create
                existing = client.read_global_concurrency_limit_by_name(GPU_LIMIT)
    if existing.limit != slots:
        log.warning("the Prefect concurrency limit %r has %d slot(s) but %d device(s) are visible; keeping %d "
                    "(change it with `prefect gcl update %s --limit N`)", GPU_LIMIT, existing.limit, slots,
                    existing.limit, GPU_LIMIT)
    return existing.limit


@contextlib.contextmanager
def claim_device(devices: list[str], poll_s: float = 0.5) -> Iterator[str]:
    """Hold the lock file of one free device while the block runs; yield its id.

    Waits (polling) when every device is locked — that happens only when the ``gpu`` limit has more slots than
    there are devices, and then waiting is the right thing to do.
    """
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    while True:
        for device in devices:
            handle = open(folder / f"device-{device}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                handle.seek(0)
                handle.truncate()
                handle.write(f"pid {os.getpid()}\n")
                handle.flush()
                yield device
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_s)


def queues_for_gpu(stage: str, devices: list[str]) -> bool:
    """True when ``stage`` would wait for a ``gpu`` slot and a device (``stage_placement``): an accelerator stage on
    a machine with devices."""
    return bool(devices) and needs_accelerator(stage)


@contextlib.contextmanager
def stage_placement(stage: str, devices: list[str]) -> Iterator[dict[str, str]]:
    """Environment for the process of ``stage``: a GPU stage waits for a ``gpu`` slot, then gets one device.

    On a machine with devices a CPU stage runs with ``CUDA_VISIBLE_DEVICES=""``, so it can never take a GPU a
    queued GPU stage waits for; on a machine without devices nothing changes (every stage runs on the CPU).
    """
    if not queues_for_gpu(stage, devices):
        yield {"CUDA_VISIBLE_DEVICES": ""} if devices else {}
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(GPU_LIMIT, occupy=1, strict=True), claim_device(devices) as device:
        yield {"CUDA_VISIBLE_DEVICES": device}
