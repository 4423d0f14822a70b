"""``solver="exact"`` under a wall-clock ``time_limit``: HiGHS in a worker process, the default solver beside it.

HiGHS checks its time limit only between phases: on a large instance its first LP alone can run many
times the limit, and a process cannot interrupt a thread inside HiGHS. So under a limit the MILP
runs in a separate Python process that is killed at the deadline, while the default solver runs in
this process for the whole limit; the better of the two selections is returned, so the exact path
never returns less than the default solver finds under the same ``time_limit`` (on one core the two
share it). The worker's address space is capped (:data:`MILP_MEMORY_BYTES`): a model that does not
fit ends the worker, not the machine, and the default solver's selection is returned.

Without a limit the MILP runs in this process until HiGHS finishes (:func:`solve_milp`).
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .._utils import logger
from ._milp import MilpResult, solve_milp
from ._problem import Problem, evaluate

MILP_MEMORY_BYTES = 6 * 2**30
"""Address-space cap of the MILP worker process (``RLIMIT_AS``): the exact path's extra peak memory."""

_WORKER_START_SECONDS = 1.0  # below this much time left the worker is not started (its imports alone take ~1 s)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # so that the worker imports this very package


def solve_exact(problem: Problem, *, time_limit: float | None, mip_rel_gap: float, verbose: int, start: float,
                solve_default: Callable[[float], tuple]) -> tuple[np.ndarray, float, str, str, str | None]:
    """The exact path; returns (S, upper bound, bound method, status, why the MILP gave no selection).

    Parameters
    ----------
    problem : Problem
        The instance.
    time_limit : float or None
        Wall seconds for the whole solve, counted from ``start`` (``time.perf_counter()``).
    mip_rel_gap : float
        HiGHS's relative gap.
    verbose : int
        2 or more: HiGHS's log.
    start : float
        ``time.perf_counter()`` when the solve began.
    solve_default : callable
        ``solve_default(deadline) -> (S, upper bound, bound method, timed out)``: the default solver
        stopped at ``deadline`` (a ``time.perf_counter()`` value).

    Returns
    -------
    S : ndarray of int
        Selected features.
    upper_bound : float
        The smaller valid bound of the two solvers.
    bound_method : str
        What proved it (``"milp"`` or the default solver's method).
    status : str
        ``"optimal"`` (HiGHS proved it), ``"time_limit"`` (HiGHS's selection, not proven) or
        ``"time_limit_heuristic"`` (the default solver's selection is at least as good, or HiGHS found none).
    milp_failure : str or None
        None when HiGHS returned a selection; otherwise why it did not (HiGHS's status, the deadline,
        the worker's exit), for the caller's warning.
    """
    if time_limit is None:
        milp = solve_milp(problem, time_limit=None, mip_rel_gap=mip_rel_gap, verbose=verbose >= 2)
        if milp.selected is None:  # HiGHS ended without a selection (e.g. out of memory): the default solver's
            S, default_bound, default_method, _ = solve_default(math.inf)
            upper_bound, method = (milp.upper_bound, "milp") if milp.upper_bound < default_bound else (
                default_bound, default_method)
            return S, upper_bound, method, "time_limit_heuristic", f"HiGHS: {milp.message}"
        return milp.selected, milp.upper_bound, "milp", "optimal" if milp.proven else "time_limit", None
    deadline = start + time_limit
    worker = _MilpWorker.start(problem, deadline, mip_rel_gap, verbose >= 2)
    try:
        S_default, default_bound, default_method, _ = solve_default(deadline)
        milp = worker.result() if worker is not None else MilpResult(
            None, math.inf, False, f"less than {_WORKER_START_SECONDS:g} s of the limit was left to start HiGHS")
    finally:
        if worker is not None:
            worker.close()
    upper_bound, bound_method = ((milp.upper_bound, "milp") if milp.upper_bound < default_bound
                                 else (default_bound, default_method))
    if milp.selected is None:
        return S_default, upper_bound, bound_method, "time_limit_heuristic", milp.message
    if len(milp.selected) == problem.m and evaluate(problem, milp.selected)[0] >= evaluate(problem, S_default)[0]:
        return milp.selected, upper_bound, bound_method, "optimal" if milp.proven else "time_limit", None
    return S_default, upper_bound, bound_method, "time_limit_heuristic", None


class _MilpWorker:
    """:func:`solve_milp` in a fresh Python process that is killed at ``deadline`` (``time.perf_counter()``)."""

    def __init__(self, process: subprocess.Popen, folder: Path, deadline: float):
        self.process, self.folder, self.deadline = process, folder, deadline
        self.answer, self.errors = folder / "answer.pickle", folder / "errors.txt"

    @classmethod
    def start(cls, problem: Problem, deadline: float, mip_rel_gap: float, verbose: bool) -> _MilpWorker | None:
        """Start the worker on ``problem``; None when less than a worker's start-up time is left."""
        if deadline - time.perf_counter() < _WORKER_START_SECONDS:
            return None
        folder = Path(tempfile.mkdtemp(prefix="qpm-milp-"))
        try:
            request, answer = folder / "request.pickle", folder / "answer.pickle"
            with open(request, "wb") as handle:
                # wall-clock deadline: the worker's imports count against it too
                pickle.dump({"problem": problem, "deadline": time.time() + deadline - time.perf_counter(),
                             "mip_rel_gap": mip_rel_gap, "verbose": verbose, "answer": str(answer),
                             "memory_bytes": MILP_MEMORY_BYTES}, handle)
            environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_ROOT,
                                                                                  os.environ.get("PYTHONPATH")]))}
            # stderr to a file, not a pipe: nobody reads a pipe while the default solver runs
            with open(folder / "errors.txt", "wb") as errors:
                process = subprocess.Popen(
                    [sys.executable, "-c", "import sys; from qpm_sklearn.selection._exact import run_worker; "
                                           "run_worker(sys.argv[1])", str(request)],
                    env=environment, stdout=None if verbose else subprocess.DEVNULL, stderr=errors,
                )
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(process, folder, deadline)

    def result(self) -> MilpResult:
        """Wait for the worker until the deadline; its result, or why there is none."""
        try:
            self.process.wait(timeout=max(self.deadline - time.perf_counter(), 0.0))
        except subprocess.TimeoutExpired:
            logger.info("exact selection: HiGHS stopped at the time limit (worker process ended)")
            return MilpResult(None, math.inf, False, "HiGHS was still running at the deadline and was stopped")
        if self.process.returncode != 0 or not self.answer.exists():
            last = self.errors.read_bytes().decode(errors="replace").strip().splitlines()[-1:]
            return MilpResult(None, math.inf, False, f"the HiGHS worker process ended with exit status "
                                                     f"{self.process.returncode}{f': {last[0]}' if last else ''}")
        with open(self.answer, "rb") as handle:
            milp = pickle.load(handle)
        return milp if milp.selected is not None else milp._replace(message=f"HiGHS: {milp.message}")

    def close(self) -> None:
        """Kill the worker if it still runs (HiGHS did not stop at its own limit) and remove its files."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def run_worker(request_path: str) -> None:
    """Worker-process side of :class:`_MilpWorker`: read the request, solve, write the answer."""
    with open(request_path, "rb") as handle:
        request = pickle.load(handle)
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (request["memory_bytes"], request["memory_bytes"]))
    except (ImportError, ValueError, OSError):  # no such limit on this platform: the deadline still holds
        pass
    # HiGHS's own limit ends it cleanly (with its incumbent) when it checks in time; a small margin
    # leaves room to write the answer before the parent's deadline.
    remaining = request["deadline"] - time.time()
    time_limit = max(0.9 * remaining - 0.2, 1e-3)
    result = solve_milp(request["problem"], time_limit=time_limit, mip_rel_gap=request["mip_rel_gap"],
                        verbose=request["verbose"])
    answer = Path(request["answer"])
    partial = answer.with_suffix(".partial")
    with open(partial, "wb") as handle:
        pickle.dump(result, handle)
    os.replace(partial, answer)  # the parent reads only a complete answer
