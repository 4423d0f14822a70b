"""The thread-count-independent BatchNorm's hand-written backward against PyTorch's own BatchNorm."""

import subprocess
import sys

import numpy as np
import torch

from qpm_sklearn.adapter import _thread_stable_batch_norm


def test_forward_backward_and_running_statistics_match_pytorch_in_float64():
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(3000, 24, dtype=torch.float64, generator=generator) * 3 + 1
    upstream = torch.randn(3000, 24, dtype=torch.float64, generator=generator)
    ours, native = torch.nn.BatchNorm1d(24).double(), torch.nn.BatchNorm1d(24).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 2.0, generator=generator)
        ours.bias.uniform_(-1.0, 1.0, generator=generator)
    native.load_state_dict(ours.state_dict())
    results = []
    for function in (lambda x: _thread_stable_batch_norm(x, ours), native):
        x = rows.clone().requires_grad_(True)
        out = function(x)
        (out * upstream).sum().backward()
        results.append((out.detach(), x.grad))
    for mine, reference in zip(results[0], results[1]):
        np.testing.assert_allclose(mine.numpy(), reference.numpy(), rtol=1e-10, atol=1e-10)
    for name in ("weight", "bias"):
        np.testing.assert_allclose(getattr(ours, name).grad.numpy(), getattr(native, name).grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(ours.running_mean.numpy(), native.running_mean.numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ours.running_var.numpy(), native.running_var.numpy(), rtol=1e-12)


def test_without_affine_parameters_the_input_gradient_matches_pytorch():
    rows = torch.randn(500, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    upstream = torch.randn(500, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = []
    for function in (lambda x, n=torch.nn.BatchNorm1d(5, affine=False).double(): _thread_stable_batch_norm(x, n),
                     torch.nn.BatchNorm1d(5, affine=False).double()):
        x = rows.clone().requires_grad_(True)
        (function(x) * upstream).sum().backward()
        grads.append(x.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


_THREADS = """
import hashlib, sys, torch
from qpm_sklearn.adapter import _thread_stable_batch_norm
torch.set_num_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(0)
x = (torch.randn(200000, 6, generator=g) * 5 + 2).requires_grad_(True)
norm = torch.nn.BatchNorm1d(6)
out = _thread_stable_batch_norm(x, norm)
(out * torch.randn(200000, 6, generator=g)).sum().backward()
for tensor in (out.detach(), x.grad, norm.weight.grad, norm.bias.grad, norm.running_mean, norm.running_var):
    print(hashlib.sha256(tensor.numpy().tobytes()).hexdigest())  # bit for bit
"""


def test_forward_and_backward_do_not_depend_on_the_thread_count():
    # Many rows, few columns: PyTorch's own kernel splits such sums over the rows and threads.
    outputs = {subprocess.run([sys.executable, "-c", _THREADS, str(n)], capture_output=True, text=True, check=True,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": str(n)}).stdout
               for n in (1, 2)}
    assert len(outputs) == 1, outputs
