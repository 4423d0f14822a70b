"""``qpm-sklearn table``: reproduce the DINO-QPM paper's table on CUB-200-2011 or Stanford Cars.

    qpm-sklearn table --dataset cub --root ~/datasets --embedding-cache cache/ --device cuda
    python benchmarks/paper_table.py --dataset cub --root ~/datasets --embedding-cache cache/ --device cuda

The harness behind the command (docs/datasets.md); not public API. Embeds every image once (patch
tokens for the adapters, the CLS token for the linear probe; with ``--embedding-cache`` a rerun
reads them back), then fits and evaluates the rows the paper compares:

========================  ================================================================
``linear_probe``          DINOv2 CLS linear probe (docs/baselines.md): StandardScaler + LogisticRegression
``dense``                 Dense F^froz: the stage-1 model of the ``qpm`` fit (no second fit)
``qpm``                   DINO-QPM: 50 features, 5 per class
``qpm_compact``           DINO-QPM Compact: 50 features, 4 per class
``sldd`` / ``qsenn``      DINO-SLDD / DINO-QSENN (docs/baselines.md)
========================  ================================================================

and with ``--ablations``: DINO-QPM on the CLS token instead of the patch tokens, on DINOv2 without
registers, and on the small and large backbones. The table is printed beside the paper's numbers
and written as JSON (default ``paper_table-<dataset>.json`` in the current folder, and
``benchmarks/results/`` for ``benchmarks/paper_table.py``). Metrics are
fractions in [0, 1] in the JSON and percentages in the printed table, like the paper.

``--model`` may name another backbone family (docs/backbones.md), e.g. ``microsoft/resnet-50`` or
``facebook/dinov3-vitb16-pretrain-lvd1689m``: its rows are labelled with it, the probe reads the
mean-pooled features of a backbone without a CLS token, and the paper's numbers are shown only where
the paper has that backbone: a ResNet's qpm row beside "ResNet50 QPM [QPM paper]", which is a
fine-tuned ResNet50 (docs/method.md#comparison-systems), whereas here the ResNet is frozen and feeds the adapter.

A row that fails is reported (its error is in the JSON and the printout) and the others still run;
the exit status is then 1. ``--fail-fast`` raises instead.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import numpy as np

# The paper's columns, in the order of the paper's table; "Correlation" is computed and saved as well.
COLUMNS = ("Accuracy", "Plausibility", "SID@5", "Class-Independence", "Contrastiveness")

# The paper's table, in %: Accuracy, Plausibility (CUB only), SID@5, Class-Independence, Contrastiveness.
_PAPER_ROWS = {
    "linear_probe": ((87.9, 91.7), 42.6, (50.9, 51.5), (99.2, 99.1), (59.2, 60.9)),
    "dense": ((78.1, 92.9), 32.7, (91.8, 93.1), (98.8, 98.7), (84.5, 82.8)),
    "sldd": ((84.6, 92.9), 78.0, (88.7, 90.9), (94.4, 93.9), (93.0, 94.9)),
    "qsenn": ((85.4, 93.3), 86.0, (91.5, 92.6), (93.6, 94.0), (94.4, 94.9)),
    "qpm": ((88.3, 94.0), 95.0, (90.1, 91.7), (93.7, 93.7), (100.0, 100.0)),
    "qpm_compact": ((88.3, 94.0), 94.4, (None, None), (93.8, 93.6), (100.0, 100.0)),
}


# The paper's "ResNet50 QPM [QPM paper]": a *fine-tuned* ResNet50 (docs/method.md#comparison-systems). The qpm row on a ResNet
# backbone is compared with it, labelled as what it is here: a frozen ResNet feeding the adapter.
_RESNET50_QPM = ((82.9, 92.1), 82.9, (89.6, 88.2), (96.8, 97.8), (93.6, 97.1))
# Backbone families whose rows the paper's DINOv2 numbers describe.
_DINOV2_FAMILIES = ("dinov2", "dinov2_with_registers")


def paper_numbers(dataset: str, rows: dict = _PAPER_ROWS) -> dict:
    """``{row: {column: value in %}}`` of the paper's table for ``dataset`` ("cub" or "cars")."""
    which = 0 if dataset == "cub" else 1
    table = {}
    for row, (accuracy, plausibility, sid, independence, contrast) in rows.items():
        values = {
            "Accuracy": accuracy[which],
            "Plausibility": plausibility if dataset == "cub" else None,
            "SID@5": sid[which],
            "Class-Independence": independence[which],
            "Contrastiveness": contrast[which],
        }
        table[row] = {k: v for k, v in values.items() if v is not None}
    return table


DEFAULT_MODEL = "facebook/dinov2-with-registers-base"
DEFAULT_ABLATION_MODELS = {
    "no_registers": "facebook/dinov2-base",
    "small": "facebook/dinov2-with-registers-small",
    "large": "facebook/dinov2-with-registers-large",
}
# docs/baselines.md: dense stage of 40 epochs with diversity 0.196; fine-tuning with CE + 0.196 L_div
# and no L1 terms, 50 epochs (SLDD) or 25 epochs per iteration (QSENN).
_BASELINE = dict(dense_epochs=40, dense_diversity=0.196, sparse_diversity=0.196, l1_maps=0.0, l1_features=0.0)


@dataclass(frozen=True)
class Row:
    """One line of the table: what to fit and on which embedding."""

    name: str
    label: str
    kind: str  # "probe", "qpm" (sparse stage of a QPMClassifier) or "dense" (its stage 1)
    params: dict = field(default_factory=dict)
    model: str | None = None  # None: the main --model
    output: str = "patch"


def build_rows(args) -> dict[str, Row]:
    """Every row this script knows, with the estimator settings of ``args`` applied."""
    compact = {"n_per_class": args.compact_n_per_class}
    rows = [
        Row("linear_probe", "DINOv2 f_CLS^froz Linear Probe", "probe", output="cls"),
        Row("dense", "Dense F^froz", "dense"),
        Row("qpm", "DINO-QPM", "qpm"),
        Row("qpm_compact", "DINO-QPM Compact", "qpm", compact),
        Row("sldd", "DINO-SLDD", "qpm", dict(_BASELINE, selection="sldd", sparse_epochs=50)),
        Row("qsenn", "DINO-QSENN", "qpm", dict(_BASELINE, selection="qsenn", sparse_epochs=25)),
        Row("ablation_cls_tokens", "Ablation: DINO-QPM on the CLS token", "qpm", output="cls"),
    ]
    models = dict(DEFAULT_ABLATION_MODELS, **dict(args.ablation_model or []))
    labels = {"no_registers": "without registers", "small": "ViT-S backbone", "large": "ViT-L backbone"}
    rows += [Row(f"ablation_{key}", f"Ablation: DINO-QPM, {labels[key]}", "qpm", model=models[key]) for key in labels]
    return {row.name: row for row in rows}


MAIN_ROWS = ("linear_probe", "dense", "qpm", "qpm_compact", "sldd", "qsenn")
ABLATION_ROWS = ("ablation_cls_tokens", "ablation_no_registers", "ablation_small", "ablation_large")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or key not in DEFAULT_ABLATION_MODELS or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=MODEL with KEY in {sorted(DEFAULT_ABLATION_MODELS)}; got {text!r}")
    return key, value


DESCRIPTION = "Reproduce the DINO-QPM paper's table on CUB-200-2011 or Stanford Cars (see docs/datasets.md)."


def parse_args(argv=None, *, prog: str | None = None, default_out_dir=None) -> argparse.Namespace:
    """The harness's arguments; ``--out`` defaults to ``paper_table-<dataset>.json`` in ``default_out_dir`` (or here)."""
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_arguments(parser)
    return finish_args(parser, parser.parse_args(argv), default_out_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The harness's options (all but ``-q/--quiet``, which the command line shares between commands)."""
    parser.add_argument("--dataset", choices=("cub", "cars"), required=True, help="which table: CUB-200-2011 or Stanford Cars")
    parser.add_argument("--root", required=True, help="dataset root (see docs/datasets.md)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local folder of the backbone")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: auto)")
    parser.add_argument("--rows", default=",".join(MAIN_ROWS), help=f"comma-separated subset of {', '.join(MAIN_ROWS + ABLATION_ROWS)}")
    parser.add_argument("--ablations", action="store_true", help="add the ablation rows (embeds with several backbones)")
    parser.add_argument(
        "--ablation-model",
        action="append",
        type=_key_value,
        metavar="KEY=MODEL",
        help=f"backbone of an ablation row (defaults: {DEFAULT_ABLATION_MODELS})",
    )
    parser.add_argument(
        "--embedding-cache", default=None, metavar="DIR",
        help="embedding cache folder (DIR/embeddings, and the dense-stage cache DIR/dense_stage): reruns read it back",
    )  # fmt: skip
    parser.add_argument("--out", default=None, metavar="FILE.json", help="JSON path (default paper_table-<dataset>.json in the current folder)")
    parser.add_argument("--image-size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per backbone forward pass")
    parser.add_argument("--local-files-only", action="store_true", help="never contact the Hugging Face hub")
    parser.add_argument("--random-state", type=int, default=383534468, help="seed of every fit (default: the paper's)")
    parser.add_argument("--n-features", type=int, default=512, help="adapter channels (QPMClassifier n_features; default 512)")
    parser.add_argument("--hidden-size", type=int, default=2048, help="adapter width (default 2048)")
    parser.add_argument("--n-layers", type=int, default=4, help="adapter depth (default 4)")
    parser.add_argument("--n-selected", type=int, default=50, help="features selected (default 50)")
    parser.add_argument("--n-per-class", type=int, default=5, help="features per class (default 5)")
    parser.add_argument("--compact-n-per-class", type=int, default=4, help="features per class of qpm_compact (default 4)")
    parser.add_argument(
        "--redundancy", choices=("paper", "consistent"), default="paper",
        help="redundancy rule of the selection (default: the authors' procedure, which produced the paper's numbers)",
    )  # fmt: skip
    parser.add_argument("--probe-c", type=float, default=1.0, help="inverse L2 strength of the linear probe")
    parser.add_argument("--quick", action="store_true", help="1 epoch per stage and a short probe fit (smoke tests)")
    parser.add_argument("--fail-fast", action="store_true", help="raise on the first failing row")


def finish_args(parser: argparse.ArgumentParser, args: argparse.Namespace, default_out_dir=None) -> argparse.Namespace:
    """Check ``--rows`` against the known rows, add the ablations, and fill in ``--out``."""
    known = MAIN_ROWS + ABLATION_ROWS
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in known]
    if unknown or not rows:
        parser.error(f"--rows must name some of {', '.join(known)}; got {args.rows!r}")
    if args.ablations:
        rows += [r for r in ABLATION_ROWS if r not in rows]
    args.rows = rows
    if args.out is None:
        args.out = str(Path(default_out_dir or ".") / f"paper_table-{args.dataset}.json")
    return args


def load_dataset(name: str, root):
    from qpm_sklearn.datasets import load_cub, load_stanford_cars

    return load_cub(root) if name == "cub" else load_stanford_cars(root)


class Embeddings:
    """Each (backbone, output) embedded once per run, all images at once (train and test)."""

    def __init__(self, paths, args):
        self.paths, self.args = paths, args
        self.store, self.seconds = {}, {}

    def layout(self, model: str):
        """The backbone's token layout (family, CLS or not), from its configuration."""
        return backbone_layout(model, self.args.local_files_only)

    def vector_output(self, model: str, output: str) -> str:
        """``output``, with "cls" read as "mean" for a backbone without a CLS token (SigLIP, CNNs)."""
        return "mean" if output == "cls" and not self.layout(model).has_cls else output

    def release(self, keep) -> None:
        """Drop the embeddings not in ``keep`` (a set of (model, output)); a full CUB grid is gigabytes."""
        for key in [k for k in self.store if k not in keep]:
            del self.store[key]

    def get(self, model: str, output: Literal["patch", "cls", "mean"]) -> np.ndarray:
        key = (model, output)
        if key not in self.store:
            from qpm_sklearn import PatchEmbedder

            embedder = PatchEmbedder(
                model=model,
                output=output,
                # DINOv2 as in the paper; other families as their own image processor says.
                preprocessing="imagenet" if self.layout(model).family in _DINOV2_FAMILIES else "auto",
                image_size=self.args.image_size,
                batch_size=self.args.batch_size,
                device=self.args.device,
                output_dtype="float16",  # the paper's pipeline caches float16; halves the memory of CUB's patch grids
                local_files_only=self.args.local_files_only,
                embedding_cache=None if self.args.embedding_cache is None else str(Path(self.args.embedding_cache) / "embeddings"),
                verbose=not self.args.quiet,
            )
            _log(f"embedding {len(self.paths)} images: {model} ({output})")
            start = time.perf_counter()
            self.store[key] = embedder.transform(self.paths)
            self.seconds[f"{model} [{output}]"] = round(time.perf_counter() - start, 3)
        return self.store[key]


# Parsed arguments that are not settings of the run (the command line's own).
_NOT_SETTINGS = ("out", "handler", "debug", "command")


def _log(message: str) -> None:
    print(f"[paper_table {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class Runner:
    """Fits and evaluates rows; QPM fits are shared between rows (``dense`` reads the ``qpm`` fit)."""

    def __init__(self, args, data, memory_dir):
        self.args = args
        self.y = data.labels
        self.train = np.asarray(data.is_train, dtype=bool)
        self.test = ~self.train
        self.embeddings = Embeddings(data.paths, args)
        self.mask_paths = None if data.mask_paths is None else [p for p, t in zip(data.mask_paths, self.test) if t]
        self.masks = {}
        self.memory_dir = memory_dir
        self.fitted = {}

    def test_masks(self, grid):
        """Test-split masks resized straight to the patch grid, as the paper's evaluation does (None without masks)."""
        if self.mask_paths is None:
            return None
        if grid not in self.masks:
            from qpm_sklearn.datasets import load_masks

            self.masks[grid] = load_masks(self.mask_paths, size=grid)
        return self.masks[grid]

    def embeddings_needed(self, row: Row) -> set:
        model = row.model or self.args.model
        vector = self.embeddings.vector_output(model, "cls")
        return {(model, vector), (model, "patch")} if row.kind == "probe" else {(model, self.embeddings.vector_output(model, row.output))}

    def qpm_params(self, row: Row) -> dict:
        args = self.args
        params = dict(
            n_features=args.n_features,
            hidden_size=args.hidden_size,
            n_layers=args.n_layers,
            n_selected=args.n_selected,
            n_per_class=args.n_per_class,
            redundancy=args.redundancy,
            device=args.device,
            memory=self.memory_dir,
            random_state=args.random_state,
            verbose=not args.quiet,
        )
        params.update(row.params)
        if args.quick:
            params.update(dense_epochs=1, sparse_epochs=1)
        return params

    def split(self, X):
        return np.asarray(X[self.train]), self.y[self.train], np.asarray(X[self.test]), self.y[self.test]

    def run(self, row: Row) -> tuple[dict, dict]:
        """``(metrics, details)`` of one row."""
        model = row.model or self.args.model
        output = self.embeddings.vector_output(model, row.output)
        X = self.embeddings.get(model, output)
        X_train, y_train, X_test, y_test = self.split(X)
        if row.kind == "probe":
            return self._probe(X_train, y_train, X_test, y_test, model)
        # The CLS-token ablation has one token per image: 1 x 1 maps, on which the map metrics
        # (Plausibility, SID@5) mean nothing, so they are left out.
        has_grid = X.ndim == 4
        masks = self.test_masks(tuple(X.shape[1:3])) if has_grid else None
        base = Row(row.name, row.label, "qpm", {}, row.model, row.output) if row.kind == "dense" else row
        params = self.qpm_params(base)
        estimator, fit_seconds = self._fit(params, X_train, y_train, key=(model, output))
        from qpm_sklearn.metrics import evaluate

        stage: Literal["dense", "sparse"] = "dense" if row.kind == "dense" else "sparse"
        metrics = evaluate(
            estimator,
            X_test,
            y_test,
            masks=masks,
            X_train=X_train,
            y_train=y_train,
            stage=stage,
            random_state=self.args.random_state,
        )
        if not has_grid:
            metrics.pop("SID@5", None)
        details = {
            "model": model,
            "tokens": output,
            "stage": stage,
            "fit_seconds": fit_seconds,
            "params": {k: v for k, v in params.items() if k not in ("memory", "verbose")},
        }
        if stage == "sparse":
            details["selection_info"] = _jsonable(estimator.selection_info_)
            details["features_per_class"] = np.asarray(estimator.assignment_).sum(axis=1).tolist()
        return metrics, details

    def _fit(self, params, X_train, y_train, key):
        from qpm_sklearn import QPMClassifier

        fit_key = (key, tuple(sorted((k, repr(v)) for k, v in params.items())))
        if fit_key not in self.fitted:
            start = time.perf_counter()
            estimator = QPMClassifier(**params).fit(X_train, y_train)
            self.fitted[fit_key] = (estimator, round(time.perf_counter() - start, 3))
        return self.fitted[fit_key]

    def _probe(self, X_train, y_train, X_test, y_test, model):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from qpm_sklearn.metrics import evaluate_linear_probe

        X_patch = self.embeddings.get(model, "patch")
        patch_test = np.asarray(X_patch[self.test])
        max_iter = 50 if self.args.quick else 1000
        start = time.perf_counter()
        probe = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.args.probe_c, max_iter=max_iter)
        ).fit(X_train.astype(np.float32), y_train)
        fit_seconds = round(time.perf_counter() - start, 3)
        metrics = evaluate_linear_probe(
            probe,
            X_test.astype(np.float32),
            patch_test,
            y_test,
            masks=self.test_masks(tuple(X_patch.shape[1:3])),
            X_cls_train=X_train,
            y_train=y_train,
            random_state=self.args.random_state,
        )
        details = {"model": model, "tokens": self.embeddings.vector_output(model, "cls"), "fit_seconds": fit_seconds, "params": {"C": self.args.probe_c, "max_iter": max_iter}}
        return metrics, details


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _device_name(device) -> str:
    import torch

    from qpm_sklearn._device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        return torch.cuda.get_device_name(resolved)
    return f"{resolved.type} ({platform.processor() or platform.machine()})"


def format_table(results: list[dict], dataset: str) -> str:
    """The rows as text: every metric as ``ours (paper)`` in %, "–" where there is no value."""
    columns = [c for c in COLUMNS if dataset == "cub" or c != "Plausibility"]
    header = ["Method"] + [f"{c} ({dataset.upper()})" for c in columns]
    lines = []
    for result in results:
        cells = [result["label"]]
        for column in columns:
            ours = result["metrics"].get(column)
            paper = result["paper"].get(column)
            text = "–" if ours is None else f"{100 * ours:.1f}"
            cells.append(text if paper is None else f"{text} ({paper:.1f})")
        if result["status"] != "ok":
            cells[1:] = [f"failed: {result['error'].splitlines()[-1][:80]}"] + [""] * (len(columns) - 1)
        lines.append(cells)
    widths = [max(len(r[i]) for r in [header] + lines) for i in range(len(header))]
    render = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(header), rule] + [render(r) for r in lines] + ["(paper's numbers in parentheses, %)"])


def main(argv=None, *, prog: str | None = None, default_out_dir=None) -> int:
    """Parse ``argv`` and run the harness; returns the exit status (1 when a row failed)."""
    return run(parse_args(argv, prog=prog, default_out_dir=default_out_dir))


def run(args: argparse.Namespace) -> int:
    """Run the harness with parsed arguments; returns the exit status (1 when a row failed)."""
    import qpm_sklearn
    from qpm_sklearn._atomic import write_bytes_atomically

    from ._outputs import check_output_file, prepare_output_folder

    out = Path(args.out).expanduser()
    prepare_output_folder(out.parent, "--out")  # checked now: the JSON is written after hours of work
    check_output_file(out, "--out")
    data = load_dataset(args.dataset, args.root)
    if data.is_train.all() or not data.is_train.any():
        raise ValueError(f"root={args.root!r}: the dataset needs both training and test images.")
    rows = build_rows(args)
    layout = backbone_layout(args.model, args.local_files_only)
    paper, reference = paper_reference(args.dataset, layout.family)
    results = []
    with tempfile.TemporaryDirectory(prefix="paper_table_") as scratch:
        # joblib caches the dense stage: qpm / qpm_compact (and sldd / qsenn) share one dense fit.
        memory_dir = str(Path(args.embedding_cache) / "dense_stage") if args.embedding_cache else scratch
        runner = Runner(args, data, memory_dir)
        for position, name in enumerate(args.rows):
            row = rows[name]
            runner.embeddings.release(set().union(*(runner.embeddings_needed(rows[n]) for n in args.rows[position:])))
            _log(f"row {name}: {row.label}")
            start = time.perf_counter()
            own_backbone = row.model is None  # the ablation rows name their (DINOv2) backbones
            result = {
                "name": name,
                "label": backbone_label(row, layout) if own_backbone else row.label,
                "paper": paper.get(name, {}) if own_backbone else paper_numbers(args.dataset).get(name, {}),
                "metrics": {},
            }
            try:
                metrics, details = runner.run(row)
                result.update(status="ok", metrics={k: float(v) for k, v in metrics.items()}, **details)
            except Exception:
                if args.fail_fast:
                    raise
                result.update(status="failed", error=traceback.format_exc())
                _log(f"row {name} failed:\n{result['error']}")
            result["seconds"] = round(time.perf_counter() - start, 3)
            results.append(result)
    report = {
        "benchmark": "paper_table",
        "dataset": args.dataset,
        "root": str(data.root),
        "model": args.model,
        "backbone": {"family": layout.family, "paper_reference": reference},
        "device": _device_name(args.device),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"qpm_sklearn": qpm_sklearn.__version__, "python": platform.python_version(), **_versions()},
        "n_train": int(data.is_train.sum()),
        "n_test": int((~data.is_train).sum()),
        "n_classes": len(data.class_names),
        "settings": {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS},
        "embedding_seconds": runner.embeddings.seconds,
        "rows": results,
    }
    write_bytes_atomically(out, (json.dumps(_jsonable(report), indent=2) + "\n").encode("utf-8"))
    print(format_table(results, args.dataset))
    print(f"written: {out}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


@functools.cache
def backbone_layout(model: str, local_files_only: bool):
    """The token layout of ``model`` (:func:`qpm_sklearn.backbones.load_layout`), read once."""
    from qpm_sklearn.backbones import load_layout

    return load_layout(model, local_files_only=local_files_only)


def paper_reference(dataset: str, family: str) -> tuple[dict, str]:
    """The paper's numbers the rows of a ``family`` backbone are shown beside, and what they are."""
    if family in _DINOV2_FAMILIES:
        return paper_numbers(dataset), "DINO-QPM paper's table (frozen DINOv2 with registers, ViT-B/14)"
    if family == "resnet":
        return paper_numbers(dataset, {"qpm": _RESNET50_QPM}), (
            "qpm row only: 'ResNet50 QPM [QPM paper]' (the paper's table), a fine-tuned ResNet50; here the "
            "ResNet is frozen and feeds the adapter, so the numbers are not like for like"
        )
    return {}, f"none: the paper has no {family} rows"


def backbone_label(row: Row, layout) -> str:
    """The row's label, naming the backbone when it is not the paper's DINOv2."""
    if layout.family in _DINOV2_FAMILIES:
        return row.label
    if row.kind == "probe":
        return f"Frozen {layout.family} {'CLS' if layout.has_cls else 'mean-pooled'} linear probe"
    return f"{row.label.replace('DINO-', '')} [frozen {layout.family} + adapter]"


def _versions() -> dict:
    import sklearn
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "sklearn": sklearn.__version__}



def register(commands, common: argparse.ArgumentParser) -> None:
    """Add ``table`` to the subcommands of the command line."""
    parser = commands.add_parser(
        "table",
        parents=[common],
        help="reproduce the paper's table on CUB-200-2011 or Stanford Cars",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=lambda args: run(finish_args(parser, args)))
