"""Temporary GPU check of training.py (graphs vs eager, speed, memory). Not part of the repo."""
import json, os, sys, time
import numpy as np, torch
sys.path.insert(0, os.getcwd())
from qpm_sklearn.adapter import TokenMLP, DenseHead, SparseHead, QPMNetwork, network_state
from qpm_sklearn.training import train_network, forward_in_batches

dev = torch.device("cuda")
res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
def build(D, C, hidden=2048, nf=512, layers=4, dropout=0.2, seed=0, sparse=None):
    torch.manual_seed(seed)
    mlp = TokenMLP(D, hidden, nf, layers)
    if sparse is None:
        return QPMNetwork(mlp, DenseHead(nf, C, dropout))
    sel, W = sparse
    return QPMNetwork(mlp, SparseHead(W, np.ones(len(sel)) * 0.5, np.ones(len(sel)) * 0.2), selected=sel)

def maxdiff(a, b):
    return max(float(np.abs(a[k] - b[k]).max() / (np.abs(a[k]).max() + 1e-12)) for k in a)

# 1. correctness: graphs vs eager vs streaming, small problem
n, P, D, C = 700, 64, 96, 10
g = torch.Generator().manual_seed(0)
y = torch.randint(0, C, (n,), generator=g).numpy()
X = (torch.randn(n, P, D, generator=g) + torch.randn(C, 1, D, generator=g)[y]).numpy()
kw = dict(grid=(8, 8), epochs=3, batch_size=32, lr=1e-3, weight_decay=7e-4, diversity=0.5, device="cuda", seed=5)
states = {}
for name, extra in [("graph", {}), ("graph2", {}), ("eager", dict(cuda_graphs=False)), ("stream", dict(resident=False))]:
    net = build(D, C, hidden=128, nf=64, layers=3)
    h = train_network(net, X, y, **kw, **extra)
    states[name] = network_state(net)
    res[f"small_{name}_loss"] = [r["loss"] for r in h]
res["graph_vs_graph2_bitequal"] = all(np.array_equal(states["graph"][k], states["graph2"][k]) for k in states["graph"])
res["graph_vs_eager_maxreldiff"] = maxdiff(states["graph"], states["eager"])
res["stream_vs_eager_maxreldiff"] = maxdiff(states["stream"], states["eager"])
print(json.dumps(res, indent=1), flush=True)

# 2. CUB size dense stage
n, P, D, C = 5994, 256, 768, 200
y = np.random.default_rng(0).integers(0, C, n)
t = time.perf_counter()
Xd = torch.randn(n, P, D, device=dev, dtype=torch.bfloat16)
Xh = Xd[:1000].float().cpu().numpy()
torch.cuda.synchronize(); res["make_data_s"] = time.perf_counter() - t
for bs in (32, 256):
    for graphs in (True, False):
        net = build(D, C)
        torch.cuda.reset_peak_memory_stats()
        h = train_network(net, Xd, y, grid=(16, 16), epochs=3, batch_size=bs, lr=1e-3, weight_decay=7e-4,
                          diversity=0.5, device="cuda", seed=0, cuda_graphs=graphs)
        res[f"dense_bs{bs}_graphs{graphs}_epoch_s"] = [round(r["seconds"], 4) for r in h]
        res[f"dense_bs{bs}_graphs{graphs}_peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
        print(bs, graphs, res[f"dense_bs{bs}_graphs{graphs}_epoch_s"], res[f"dense_bs{bs}_graphs{graphs}_peak_GB"], flush=True)
# sparse stage bs 16
sel = np.sort(np.random.default_rng(1).choice(512, 50, replace=False))
W = np.zeros((C, 50), np.float32)
for c in range(C):
    W[c, np.random.default_rng(c).choice(50, 5, replace=False)] = 1
for graphs in (True, False):
    net = build(D, C, sparse=(sel, W))
    for p in net.head.parameters(): p.requires_grad_(False)
    h = train_network(net, Xd, y, grid=(16, 16), epochs=2, batch_size=16, lr=5e-3, weight_decay=8e-4,
                      diversity=1.0, l1_maps=5.0, l1_features=1.0, device="cuda", seed=0, cuda_graphs=graphs)
    res[f"sparse_bs16_graphs{graphs}_epoch_s"] = [round(r["seconds"], 4) for r in h]
    print("sparse", graphs, res[f"sparse_bs16_graphs{graphs}_epoch_s"], flush=True)
# forward + upload timing
net = build(D, C)
torch.cuda.synchronize(); t = time.perf_counter()
out = forward_in_batches(net, Xd, grid=(16, 16), batch_size=256, device="cuda")
res["forward_5994_s"] = time.perf_counter() - t
t = time.perf_counter()
h = train_network(net, Xh, y[:1000], grid=(16, 16), epochs=1, batch_size=256, lr=1e-3, weight_decay=7e-4,
                  diversity=0.5, device="cuda", seed=0)
res["numpy_1000_upload_plus_epoch_s"] = time.perf_counter() - t
print(json.dumps(res, indent=1))
os.makedirs(os.environ.get("OUT", "/tmp"), exist_ok=True)
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "check.json"), "w"), indent=1)
