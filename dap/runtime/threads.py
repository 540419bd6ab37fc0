"""CPU threads: the OpenMP wait policy, the intra-op thread count, a scoped thread count.

OpenMP wait policy
------------------
PyTorch's CPU kernels run on an OpenMP thread team. By default (GNU libgomp) idle team threads
*spin* for a while before sleeping. On a machine whose cores are shared with other busy
processes (CI runners, a laptop running a notebook and a test suite, JupyterHub), a spinning
thread holds a core the partner thread needs, and every parallel region then waits for a
descheduled thread: a 2-thread run next to one other busy process was measured 20-30x slower.
``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep at once and removes the slowdown. It is
a trade: every parallel region then wakes its partner thread through the kernel, and on a
quiet machine a bf16 ``ci`` training step was ~30 % faster with libgomp's default spinning
(measured on 2 vCPUs: 14.0 img/s PASSIVE vs 19.9 default, plain float32 9.8 vs 12.1; with one
busy neighbour: 4.4 vs 0.8). PASSIVE is the safe default for laptops, CI runners and shared
servers; on a dedicated machine ``export OMP_WAIT_POLICY=ACTIVE`` (or a ``GOMP_SPINCOUNT``)
before starting Python is faster, and :func:`set_wait_policy` keeps a value you set.

libgomp reads the variable once, when it is loaded, and ``import torch`` loads it. So the
variable must be in the environment *before torch is imported*: :func:`set_wait_policy` puts
it into ``os.environ`` (it imports nothing heavy) and says whether it came in time. Where to
set it: the start of the command line (before any command imports torch) and of every benchmark script, the
first code cell of a notebook (before ``import torch``), ``conftest.py`` for the test suite,
and the ``env`` of any subprocess or Jupyter kernel started from Python (children inherit
``os.environ``). An explicit value the user set is never overridden. The command line does
it in :func:`dap.cli.main`.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

from dap.config import ConfigError


def set_wait_policy(policy: str = "PASSIVE") -> bool:
    """Put ``OMP_WAIT_POLICY=policy`` into ``os.environ`` unless the user set it already.

    Returns True when the setting is effective for this process: torch (and with it the
    OpenMP runtime, which reads the variable once when loaded) has not been imported yet, or
    the variable was already set before. Returns False (with a warning) when torch was
    imported first; subprocesses started afterwards still inherit the variable. See the module
    docstring for why and where to call it.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return True
    os.environ["OMP_WAIT_POLICY"] = policy
    if "torch" in sys.modules:
        warnings.warn(
            "dap.runtime.set_wait_policy() ran after torch was imported: OMP_WAIT_POLICY="
            f"{policy} applies to subprocesses only. Call it (or export OMP_WAIT_POLICY="
            f"{policy}) before importing torch.", RuntimeWarning, stacklevel=2)
        return False
    return True


def _allowed_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def _cgroup_cpu_limit() -> int | None:
    """CPUs allowed by a cgroup v2 quota (containers), or None without a quota."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads counted once), at least 1.

    Read from ``/proc/cpuinfo`` (``physical id`` / ``core id`` of the CPUs in the affinity
    mask), capped by a cgroup CPU quota; elsewhere ``os.cpu_count()``.
    """
    allowed = _allowed_cpus()
    cores: set[tuple[str, str]] = set()
    try:
        proc, phys, core = None, "0", None
        for line in Path("/proc/cpuinfo").read_text().splitlines() + [""]:
            key, _, val = (part.strip() for part in line.partition(":"))
            if key == "processor":
                proc = int(val)
            elif key == "physical id":
                phys = val
            elif key == "core id":
                core = val
            elif not key and proc is not None:
                if proc in allowed:
                    cores.add((phys, core if core is not None else str(proc)))
                proc, phys, core = None, "0", None
    except (OSError, ValueError):
        cores = set()
    n = len(cores) or len(allowed) or os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(n, limit) if limit else n)


def busy_cores() -> int:
    """Cores other processes keep busy: the 1-minute load average, rounded down (0 if unknown).

    Call it before this process starts heavy work (its own threads count in the average).
    """
    try:
        return int(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0


def configure_threads(num_threads: int | None = None, interop: int | None = None,
                      busy_aware: bool = False) -> dict[str, Any]:
    """Set torch's intra-op (and optionally inter-op) CPU threads; return what is in effect.

    Parameters
    ----------
    num_threads : int, optional
        Intra-op threads. Default: ``$OMP_NUM_THREADS`` when set (the user's choice, e.g.
        one thread per notebook kernel or pytest worker), else :func:`physical_cores` —
        hyper-thread siblings share one core's vector units and only add contention here.
    interop : int, optional
        Inter-op threads (torch.jit.fork, parallel autograd of independent branches). Only
        settable before torch's first parallel work; a late call is skipped with a note in the
        returned dict. Default: leave torch's choice.
    busy_aware : bool
        With the default ``num_threads``: leave the cores that other processes keep busy
        (:func:`busy_cores`) to them, at least one thread. On an oversubscribed machine every
        parallel region waits for a partner thread that is not running, and one thread was
        measured up to 1.8x faster than two on 2 shared cores (``benchmarks/speed.py
        --fast-threads auto``). Off by default: the thread count then never depends on what
        else happens to run.

    Also calls :func:`set_wait_policy` (effective only if torch is not imported yet; see the
    module docstring).

    Returns
    -------
    dict with ``num_threads``, ``interop_threads``, ``omp_wait_policy`` and ``notes``.
    """
    notes: list[str] = []
    if not set_wait_policy_quiet():
        notes.append("OMP_WAIT_POLICY set after torch was imported: not effective in this "
                     "process")
    import torch

    if num_threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        if env.isdigit() and int(env) > 0:
            num_threads = int(env)
        else:
            num_threads = physical_cores()
            if busy_aware:
                num_threads = max(1, num_threads - busy_cores())
    if num_threads < 1:
        raise ConfigError(f"num_threads must be >= 1, got {num_threads}")
    torch.set_num_threads(num_threads)
    if interop is not None:
        try:
            torch.set_num_interop_threads(interop)
        except RuntimeError as exc:  # already started: keep torch's value
            notes.append(f"interop threads unchanged ({exc})")
    return {"num_threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"), "notes": notes}


def set_wait_policy_quiet(policy: str = "PASSIVE") -> bool:
    """:func:`set_wait_policy` without the warning (its result says whether it was in time)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return set_wait_policy(policy)



@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``, restoring the previous count after."""
    import torch

    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


__all__ = ["set_wait_policy", "set_wait_policy_quiet", "physical_cores", "busy_cores",
           "configure_threads", "num_threads"]
