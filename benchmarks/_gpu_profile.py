import os, sys, time
import numpy as np, torch
sys.path.insert(0, os.getcwd())
from qpm_sklearn.adapter import TokenMLP, DenseHead, QPMNetwork
from qpm_sklearn.training import train_network
from torch.profiler import profile, ProfilerActivity
dev = torch.device("cuda")
n, P, D, C = 5994, 256, 768, 200
y = np.random.default_rng(0).integers(0, C, n)
Xd = torch.randn(n, P, D, device=dev, dtype=torch.bfloat16)
def build():
    torch.manual_seed(0)
    return QPMNetwork(TokenMLP(D, 2048, 512, 4), DenseHead(512, C, 0.2))
kw = dict(grid=(16, 16), batch_size=256, lr=1e-3, weight_decay=7e-4, device="cuda", seed=0)
for div in (0.5, 0.0):
    h = train_network(build(), Xd, y, epochs=2, diversity=div, **kw)
    print("div", div, [round(r["seconds"], 4) for r in h], flush=True)
net = build()
train_network(net, Xd[:600], y[:600], epochs=1, diversity=0.5, cuda_graphs=False, **kw)
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    train_network(net, Xd, y, epochs=1, diversity=0.5, cuda_graphs=False, **kw)
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=90), flush=True)
# microbench: MLP fwd+bwd only
mlp = TokenMLP(D, 2048, 512, 4).to(dev)
x = Xd[:256]
def bench(fn, reps=20):
    for _ in range(3): fn()
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(reps): fn()
    torch.cuda.synchronize(); return (time.perf_counter() - t) / reps * 1000
def mlp_step():
    with torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
        out = mlp(x)
    out.float().mean().backward()
print("mlp fwd+bwd ms/step (bs256):", bench(mlp_step))
lin = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
def mm_only():
    h = x.reshape(-1, D)
    with torch.autocast("cuda", torch.bfloat16, cache_enabled=False):
        for l in lin:
            h = torch.relu(l(h))
    h.float().mean().backward()
print("linear+relu only ms/step:", bench(mm_only))
