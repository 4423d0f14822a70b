"""Training cost of ``train_network`` against a plain PyTorch loop with the same maths, on the CPU.

The plain loop trains the same network from the same initial weights on the same batches with the
same losses, AdamW and learning-rate schedule, but with PyTorch's stock BatchNorm and plain
``Tensor.sum`` in the loss terms: what ``train_network`` adds is its thread-count-independent
BatchNorm and sums (docs/guide.md#devices-precision-and-determinism) and its bookkeeping (history,
checks). Dense stage (diversity loss on) and sparse stage (selected channels, fixed sparse head),
at a small width (where the overhead shows most) and the paper's width. CPU seconds of this process,
runs interleaved (plain, ours, plain, ours, ...), median ratio reported; one thread.

    OMP_NUM_THREADS=1 python benchmarks/training_overhead.py --out benchmarks/results   # ~5 min

Writes ``training_overhead.json`` (machine, load average) into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qpm_sklearn import adapter, training
from qpm_sklearn.adapter import DenseHead, QPMNetwork, SparseHead, TokenMLP
from qpm_sklearn.training import cosine_schedule, diversity_loss, train_network

WIDTHS = {"small": dict(dim=384, hidden_size=256, n_features=64), "paper": dict(dim=384, hidden_size=2048,
                                                                               n_features=512)}
DATA = dict(n_samples=192, n_classes=12, grid=(16, 16), batch_size=32, epochs=2)


def _networks(width, sparse, seed=0):
    torch.manual_seed(seed)
    mlp = TokenMLP(width["dim"], width["hidden_size"], width["n_features"], 2)
    if not sparse:
        return QPMNetwork(mlp, DenseHead(width["n_features"], DATA["n_classes"], 0.2))
    rng = np.random.default_rng(seed)
    selected = np.sort(rng.choice(width["n_features"], 16, replace=False))
    weight = (rng.random((DATA["n_classes"], 16)) < 0.3).astype(np.float32)
    head = SparseHead(weight, mean=np.zeros(16, np.float32), std=np.ones(16, np.float32), dropout=0.1)
    network = QPMNetwork(mlp, head, selected=selected)
    return network


def plain_loop(network, tokens, y, *, epochs, batch_size, lr, weight_decay, beta, seed):
    """The textbook loop: stock BatchNorm, ``Tensor.sum`` in the losses, AdamW, the same schedule."""
    grid, n = DATA["grid"], len(y)
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    bounds = [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    schedule = lr * cosine_schedule(epochs * len(bounds), len(bounds))
    labels = torch.as_tensor(y)
    network.train()
    generator, step = torch.Generator().manual_seed(seed), 0
    torch.manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for bound in bounds:
            for group in optimizer.param_groups:
                group["lr"] = float(schedule[step])
            indices = order[bound]
            optimizer.zero_grad(set_to_none=True)
            logits, maps, features = network(tokens[indices], grid)
            loss = F.cross_entropy(logits, labels[indices])
            if beta > 0:
                loss = loss + diversity_loss(logits, maps, features, network.head.weight, beta)
            loss = loss + 0.0 * maps.abs().mean() + 0.0 * features.abs().mean()
            loss.backward()
            optimizer.step()
            step += 1


class _StockKernels:
    """Swap in PyTorch's stock BatchNorm and ``Tensor.sum`` (the plain loop's maths) for a while."""

    def __enter__(self):
        self.saved = adapter._thread_stable_batch_norm, training.thread_stable_sum
        adapter._thread_stable_batch_norm = lambda rows, norm: norm(rows)
        training.thread_stable_sum = lambda values: values.sum()

    def __exit__(self, *exc):
        adapter._thread_stable_batch_norm, training.thread_stable_sum = self.saved


def compare(width_name, sparse, repeats):
    width = WIDTHS[width_name]
    rng = np.random.default_rng(0)
    n_tokens = DATA["grid"][0] * DATA["grid"][1]
    tokens = torch.as_tensor(rng.normal(size=(DATA["n_samples"], n_tokens, width["dim"])).astype(np.float32))
    y = np.arange(DATA["n_samples"]) % DATA["n_classes"]
    template = _networks(width, sparse)
    settings = dict(epochs=DATA["epochs"], batch_size=DATA["batch_size"], lr=1e-3, weight_decay=7e-4,
                    seed=0)
    beta = 0.0 if sparse else 0.5
    plain, ours = [], []
    for _ in range(repeats):
        network = copy.deepcopy(template)
        with _StockKernels():
            start = time.process_time()
            plain_loop(network, tokens, y, beta=beta, **settings)
            plain.append(time.process_time() - start)
        network = copy.deepcopy(template)
        start = time.process_time()
        train_network(network, tokens, y, grid=DATA["grid"], diversity=beta, device="cpu", **settings)
        ours.append(time.process_time() - start)
    ratios = [a / b for a, b in zip(ours, plain)]
    row = dict(width=width_name, stage="sparse" if sparse else "dense", **width, plain_cpu_s=plain,
               train_network_cpu_s=ours, ratio_median=statistics.median(ratios), ratios=ratios,
               load_average=os.getloadavg())
    print(json.dumps({k: row[k] for k in ("width", "stage", "ratio_median")}), flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("."))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--widths", nargs="+", default=list(WIDTHS))
    args = parser.parse_args(argv)
    rows = [compare(name, sparse, args.repeats) for name in args.widths for sparse in (False, True)]
    uptime = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    result = dict(benchmark="training_overhead", machine=platform.processor() or platform.machine(),
                  cpu_count=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads(),
                  python=sys.version.split()[0], load_average_at_end=uptime, data=DATA, rows=rows,
                  note="CPU seconds of this process; runs interleaved, so their ratios are what to read "
                       "(load_average per row says what else the machine ran).")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "training_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
