"""Install every dependency at the floor setup.cfg declares, in a fresh venv, and import, embed and fit.

    python benchmarks/check_floors.py --python python3.10
    python benchmarks/check_floors.py --python python3.10 --torch-index-url https://download.pytorch.org/whl/cpu

Reads ``install_requires`` and ``python_requires`` from setup.cfg, pins each requirement to its
lower bound (``numpy>=1.24`` becomes ``numpy==1.24``), installs the pins and then this checkout
(``--no-deps``, not editable, so the wheel's package data is checked too) into a new virtual
environment, and runs a smoke job there: import every module, embed random images with a tiny
random DINOv2 with registers, fit a tiny QPMClassifier, explain, save and load it. Writes the
outcome, the installed versions and the machine to JSON (default
``benchmarks/results/floors.json``); the exit status is 0 when everything passed.

Not part of CI: it downloads several hundred MB to a few GB (torch's floor from PyPI is the CUDA
build; ``--torch-index-url`` picks the CPU wheels where that index can be reached). Run it with an
interpreter of the ``python_requires`` floor to check that too.
"""

from __future__ import annotations

import argparse
import configparser
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs inside the fresh venv: every module imports, and the main path works end to end.
SMOKE = r"""
import importlib, importlib.resources, importlib.util, pkgutil, sys, tempfile
import numpy as np
import qpm_sklearn
from qpm_sklearn import Dinov2Embedder, QPMClassifier
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

optional = {"matplotlib", "pandas", "shap", "dask", "distributed", "sphinx"}
for module in pkgutil.walk_packages(qpm_sklearn.__path__, "qpm_sklearn."):
    try:
        importlib.import_module(module.name)
    except ImportError as exc:
        if exc.name not in optional:
            raise
        print(f"skipped {module.name}: optional {exc.name} missing")
with tempfile.TemporaryDirectory() as folder:
    # A tiny random backbone built with transformers itself, so the check does not depend on
    # the package's own test helpers (checked separately below).
    config = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, image_size=56, patch_size=14, num_register_tokens=4)
    Dinov2WithRegistersModel(config).save_pretrained(folder)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 40, 40, 3), dtype=np.uint8)
    X = Dinov2Embedder(model=folder, image_size=56, local_files_only=True, device="cpu").transform(images)
    y = np.repeat([0, 1, 2], 4)
    clf = QPMClassifier(n_features=8, n_selected=4, n_per_class=2, hidden_size=8, n_layers=1,
                        dense_epochs=2, sparse_epochs=1, device="cpu", random_state=0).fit(X, y)
    explanation = clf.explain(X[:2])
    assert explanation.maps.shape[:2] == (2, 2), explanation.maps.shape
    path = clf.save(f"{folder}/model")
    np.testing.assert_array_equal(QPMClassifier.load(path).predict(X), clf.predict(X))
assert importlib.resources.files("qpm_sklearn").joinpath("py.typed").is_file(), "py.typed not installed"
print("smoke job passed:", X.shape, clf.score(X, y))
with tempfile.TemporaryDirectory() as folder:  # the public test helpers work at the floors too
    testing = importlib.import_module("qpm_sklearn.testing")
    testing.save_random_backbone(folder, "tiny")
print("test helpers passed")
"""


def read_requirements(setup_cfg: Path) -> tuple[list[str], str]:
    """``(install_requires lines, python_requires)`` of ``setup_cfg``."""
    config = configparser.ConfigParser()
    config.read(setup_cfg)
    lines = [line.strip() for line in config["options"]["install_requires"].splitlines()]
    return [line for line in lines if line and not line.startswith("#")], config["options"]["python_requires"]


def floor_pin(requirement: str) -> str:
    """``name==floor`` for ``name>=floor[,<cap]``; a requirement without a floor is an error."""
    match = re.fullmatch(r"([A-Za-z0-9_.\[\]-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)(\s*,.*)?(\s*;.*)?", requirement)
    if match is None:
        raise ValueError(f"requirement {requirement!r} has no '>=' floor; every dependency needs one to be checked.")
    name, floor, _, marker = match.groups()
    return f"{name}=={floor}{marker or ''}"


def run(command: list[str], log: list[dict], **kwargs) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    log.append(
        {
            "command": " ".join(command),
            "returncode": result.returncode,
            "seconds": round(time.perf_counter() - start, 1),
            "output_tail": (result.stdout + result.stderr)[-4000:],
        }
    )
    print(f"[{result.returncode}] {' '.join(command)[:160]}", file=sys.stderr, flush=True)
    return result


def check(python: str, venv: Path, torch_index_url: str | None, log: list[dict]) -> dict:
    requirements, python_requires = read_requirements(ROOT / "setup.cfg")
    pins = [floor_pin(r) for r in requirements]
    if run([python, "-m", "venv", str(venv)], log).returncode:
        return {"status": "failed", "step": "venv"}
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    torch_pins = [p for p in pins if p.startswith("torch==")]
    if torch_index_url and torch_pins:  # torch first, from the CPU index; the rest then sees it installed
        if run([*pip, "install", *torch_pins, "--index-url", torch_index_url], log).returncode:
            return {"status": "failed", "step": "install torch", "pins": pins}
    if run([*pip, "install", *pins], log).returncode:
        return {"status": "failed", "step": "install floors", "pins": pins}
    # Built from a copy: setuptools writes build/ and egg-info beside the sources it builds.
    with tempfile.TemporaryDirectory(prefix="qpm_floors_source_") as scratch:
        source = Path(scratch) / "source"
        artefacts = shutil.ignore_patterns(".git", "build", "_build", "generated", "*.egg-info", "__pycache__")
        shutil.copytree(ROOT, source, ignore=artefacts)
        if run([*pip, "install", "--no-deps", str(source)], log, cwd=scratch).returncode:
            return {"status": "failed", "step": "install package", "pins": pins}
    consistent = run([*pip, "check"], log).returncode == 0
    versions = run([*pip, "freeze", "--exclude", "qpm_sklearn"], log).stdout.split()
    interpreter = run([str(venv / "bin" / "python"), "--version"], log).stdout.strip()
    # From another folder, so that the installed package is imported, not this checkout.
    smoke = run([str(venv / "bin" / "python"), "-c", SMOKE], log, cwd=tempfile.gettempdir())
    return {
        "status": "passed" if smoke.returncode == 0 and consistent else "failed",
        "step": "smoke job" if smoke.returncode else ("pip check" if not consistent else None),
        "python_requires": python_requires,
        "interpreter": interpreter,
        "pins": pins,
        "installed": versions,
        "pip_check_ok": consistent,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter for the venv (default: this one)")
    parser.add_argument("--torch-index-url", default=None, help="index for torch alone (e.g. PyTorch's CPU wheels)")
    parser.add_argument("--venv", default=None, help="venv folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "floors.json"))
    args = parser.parse_args(argv)
    log: list[dict] = []
    start = time.perf_counter()
    if args.venv:
        result = check(args.python, Path(args.venv), args.torch_index_url, log)
    else:
        with tempfile.TemporaryDirectory(prefix="qpm_floors_") as scratch:
            result = check(args.python, Path(scratch) / "venv", args.torch_index_url, log)
    report = {
        "benchmark": "check_floors",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()}, {platform.system()})",
        "seconds": round(time.perf_counter() - start, 1),
        **result,
        "log": log,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{result['status']}{'' if result.get('step') is None else ' at ' + result['step']}; written: {out}")
    return 0 if result["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
