"""training.py: losses against docs/method.md#losses by hand, and the training loop's guarantees."""

import math

import numpy as np
import pytest
import torch

from qpm_sklearn.adapter import DenseHead, QPMNetwork, SparseHead, TokenMLP, network_state
from qpm_sklearn.training import (
    cosine_schedule,
    diversity_loss,
    forward_in_batches,
    l1_features,
    l1_maps,
    tokens_on_device,
    train_network,
)

GRID = (2, 2)
TRAIN = dict(grid=GRID, epochs=4, batch_size=8, lr=1e-2, weight_decay=1e-4, diversity=0.5, device="cpu", seed=3)


def _expected_diversity(logits, maps, features, weight, beta):
    """The diversity loss of docs/method.md#losses written out with loops over samples, channels and positions."""
    batch, channels = features.shape
    total = 0.0
    for b in range(batch):
        predicted = int(np.argmax(logits[b]))
        row = np.abs(weight[predicted])
        w = row / (math.sqrt(sum(v * v for v in row)) + 1e-5)
        s = features[b] / max(max(features[b]), 1e-6)
        positions = maps[b].reshape(channels, -1)
        for p in range(positions.shape[1]):
            best = -np.inf
            for n in range(channels):
                softmax = math.exp(positions[n, p]) / sum(math.exp(v) for v in positions[n])
                best = max(best, w[n] * s[n] * softmax)
            total += best
    return -beta / batch * total


def test_diversity_loss_matches_hand_computation():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])  # predicted classes 1 and 0
    maps = np.array(
        [
            [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 2.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]],
            [[[0.0, 0.0], [3.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 4.0]]],
        ]
    )  # (B=2, K=3, 2, 2)
    features = np.array([[0.25, 0.5, 0.5], [0.75, 0.5, 1.0]])
    weight = np.array([[1.0, -2.0, 0.0], [0.5, 0.5, -3.0], [1.0, 1.0, 1.0]])  # (C=3, K=3)
    expected = _expected_diversity(logits, maps, features, weight, beta=0.7)
    # A hand check of one term: sample 0 predicts class 1, w = (.5,.5,3)/sqrt(9.5).
    assert expected < 0
    got = diversity_loss(*(torch.tensor(a) for a in (logits, maps, features, weight)), 0.7)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_diversity_loss_small_feature_maximum_is_floored():
    # All features zero: s = f / max(0, 1e-6) = 0, so the loss is exactly zero (no NaN).
    logits, maps = torch.randn(2, 3), torch.randn(2, 4, 2, 2)
    loss = diversity_loss(logits, maps, torch.zeros(2, 4), torch.randn(3, 4), 1.0)
    assert loss.item() == 0.0


def test_diversity_loss_gradients_reach_maps_features_and_head_weight():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=generator, requires_grad=True)
    maps = torch.randn(4, 5, 2, 2, generator=generator, requires_grad=True)
    features = torch.rand(4, 5, generator=generator, requires_grad=True)
    weight = torch.randn(3, 5, generator=generator, requires_grad=True)
    diversity_loss(logits, maps, features, weight, 0.5).backward()
    for tensor in (maps, features, weight):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    assert logits.grad is None  # argmax only: no gradient into the logits
    # Only the rows of predicted classes receive gradient.
    predicted = set(logits.argmax(1).tolist())
    for c in range(3):
        assert (weight.grad[c].abs().sum() > 0) == (c in predicted)


def test_l1_terms():
    maps = torch.tensor([[[[1.0, -2.0], [0.0, 3.0]]]])
    features = torch.tensor([[0.5, -1.5, 2.0]])
    assert l1_maps(maps).item() == pytest.approx(6.0 / 4)
    assert l1_features(features).item() == pytest.approx(4.0 / 3)


def test_cosine_schedule_warmup_then_decay():
    factors = cosine_schedule(total_steps=200, steps_per_epoch=20)
    warmup = 10  # 5 % of 200 steps, within one epoch
    np.testing.assert_allclose(factors[:warmup], np.arange(1, warmup + 1) / warmup)
    assert factors[warmup] == pytest.approx(1.0)
    assert np.all(np.diff(factors[warmup:]) < 0) and factors[-1] > 0
    assert cosine_schedule(1000, 10)[9] == pytest.approx(1.0)  # warm-up capped at one epoch
    assert cosine_schedule(3, 3)[0] == pytest.approx(1.0)


def _separable(n=48, n_classes=3, dim=6, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    centers = rng.normal(size=(n_classes, dim)) * 3
    tokens = centers[y][:, None, :] + rng.normal(size=(n, GRID[0] * GRID[1], dim))
    return tokens.astype(dtype), y


def _dense(dim=6, n_classes=3, dropout=0.2, seed=0):
    torch.manual_seed(seed)
    return QPMNetwork(TokenMLP(dim, 16, 8, 2), DenseHead(8, n_classes, dropout=dropout))


def test_train_network_learns_a_separable_problem():
    tokens, y = _separable()
    network = _dense()
    history = train_network(network, tokens, y, **dict(TRAIN, epochs=10))
    assert history[-1]["ce"] < 0.5 * history[0]["ce"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert not network.training  # returned in eval mode
    logits = forward_in_batches(network, tokens, grid=GRID, batch_size=16, device="cpu")["logits"]
    assert (logits.argmax(1) == y).mean() == 1.0


def test_history_rows():
    tokens, y = _separable(n=20)
    history = train_network(_dense(), tokens, y, **dict(TRAIN, l1_maps=2.0, l1_features=0.5))
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    for row in history:
        assert set(row) == {"epoch", "loss", "ce", "diversity", "l1_maps", "l1_features", "lr", "seconds"}
        assert all(isinstance(v, float) and math.isfinite(v) for k, v in row.items() if k != "epoch")
        assert row["diversity"] < 0 and row["l1_maps"] > 0 and row["l1_features"] > 0 and row["seconds"] >= 0
        combined = row["ce"] + row["diversity"] + 2.0 * row["l1_maps"] + 0.5 * row["l1_features"]
        assert row["loss"] == pytest.approx(combined, rel=1e-5)
    assert history[-1]["lr"] < history[0]["lr"] <= TRAIN["lr"]
    no_diversity = train_network(_dense(), tokens, y, **dict(TRAIN, epochs=1, diversity=0.0))
    assert no_diversity[0]["diversity"] == 0.0


def test_cpu_training_is_deterministic_and_leaves_global_rng_alone():
    tokens, y = _separable(n=30)
    rng_state = torch.get_rng_state()
    states = []
    for seed in (3, 3, 4):
        network = _dense()
        train_network(network, tokens, y, **dict(TRAIN, seed=seed))
        states.append(network_state(network))
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(np.array_equal(states[0][k], states[2][k]) for k in states[0])


def test_streaming_equals_resident():
    tokens, y = _separable(n=29)
    states = []
    for resident in (True, False):
        network = _dense()
        train_network(network, tokens, y, **dict(TRAIN, batch_size=6, resident=resident))
        states.append(network_state(network))
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])


def test_sparse_stage_trains_only_the_mlp():
    tokens, y = _separable()
    dense = _dense()
    selected = np.array([1, 4, 6])
    assignment = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=np.float32)
    head = SparseHead(assignment, np.full(3, 0.2), np.full(3, 0.5))
    sparse = QPMNetwork(dense.mlp, head, selected=selected)
    mlp_before = {k: v.clone() for k, v in sparse.mlp.state_dict().items()}
    head_before = {k: v.clone() for k, v in head.state_dict().items()}
    history = train_network(sparse, tokens, y, **dict(TRAIN, diversity=1.0, l1_maps=5.0, l1_features=1.0))
    assert all(torch.equal(head.state_dict()[k], v) for k, v in head_before.items())
    assert not torch.equal(sparse.mlp.state_dict()["layers.0.weight"], mlp_before["layers.0.weight"])
    assert history[-1]["loss"] < history[0]["loss"]
    # SLDD / Q-SENN fine-tuning: mean and std train, weight stays.
    trainable = SparseHead(
        assignment, np.full(3, 0.2), np.full(3, 0.5), bias=np.zeros(3), train_stats=True, dropout=0.1
    )
    network = QPMNetwork(_dense().mlp, trainable, selected=selected)
    train_network(network, tokens, y, **TRAIN)
    assert not torch.allclose(trainable.mean, torch.full((3,), 0.2))
    assert torch.equal(trainable.weight, torch.as_tensor(assignment))


def test_frozen_mlp_with_trainable_head_only():
    tokens, y = _separable(n=16)
    network = _dense()
    for parameter in network.mlp.parameters():
        parameter.requires_grad_(False)
    weight = network.mlp.layers[0].weight.clone()
    train_network(network, tokens, y, **TRAIN)
    assert torch.equal(network.mlp.layers[0].weight, weight)
    for parameter in network.head.parameters():
        parameter.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        train_network(network, tokens, y, **TRAIN)


def test_one_token_inputs_drop_a_final_single_sample_batch():
    # (n, d) input as sklearn's estimator checks give it: one token per sample.
    rng = np.random.default_rng(0)
    y = np.arange(9) % 3
    tokens = rng.normal(size=(9, 1, 4)).astype(np.float32)
    torch.manual_seed(0)
    network = QPMNetwork(TokenMLP(4, 8, 5, 2), DenseHead(5, 3, dropout=0.0))
    history = train_network(network, tokens, y, **dict(TRAIN, grid=(1, 1), batch_size=4))
    assert len(history) == TRAIN["epochs"] and all(math.isfinite(r["loss"]) for r in history)
    with pytest.raises(ValueError, match="2 token rows"):
        train_network(network, tokens[:1], y[:1], **dict(TRAIN, grid=(1, 1)))


def test_float16_float64_and_tensor_inputs_agree():
    tokens, y = _separable(n=16, dtype=np.float16)
    states = []
    as_float32 = torch.from_numpy(tokens.astype(np.float32))
    for data in (tokens, tokens_on_device(tokens, "cpu"), as_float32, tokens.astype(np.float64)):
        network = _dense()
        train_network(network, data, y, **TRAIN)
        states.append(network_state(network))
    for other in states[1:]:
        assert all(np.array_equal(states[0][k], other[k]) for k in states[0])
    assert tokens_on_device(tokens, "cpu", resident=False) is tokens  # stays on the host for streaming


def test_input_validation():
    tokens, y = _separable(n=12)
    network = _dense()
    with pytest.raises(ValueError, match="class codes"):
        train_network(network, tokens, y + 5, **TRAIN)
    with pytest.raises(ValueError, match="shape"):
        train_network(network, tokens, y[:5], **TRAIN)
    with pytest.raises(ValueError, match="grid"):
        train_network(network, tokens, y, **dict(TRAIN, grid=(3, 3)))
    with pytest.raises(ValueError, match="tokens"):
        train_network(network, tokens[0], y, **TRAIN)
    with pytest.raises(TypeError, match="integer"):
        train_network(network, tokens, y.astype(float), **TRAIN)
    with pytest.raises(ValueError, match="batch_size"):
        train_network(network, tokens, y, **dict(TRAIN, batch_size=0))
    assert train_network(network, tokens, y, **dict(TRAIN, epochs=0)) == []


def test_forward_in_batches_matches_a_single_eval_forward():
    tokens, y = _separable(n=13)
    network = _dense(dropout=0.5)
    train_network(network, tokens, y, **dict(TRAIN, epochs=1))
    network.train()  # forward_in_batches must switch to eval and restore this
    out = forward_in_batches(network, tokens, grid=GRID, batch_size=5, device="cpu", return_maps=True)
    assert network.training
    network.eval()
    with torch.no_grad():
        logits, maps, features = network(torch.from_numpy(tokens), GRID)
    assert set(out) == {"logits", "features", "maps"}
    assert all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["maps"], maps.numpy(), rtol=1e-5, atol=1e-6)
    # No dropout: the features are the pooled maps.
    np.testing.assert_allclose(out["features"], out["maps"].mean((2, 3)), rtol=1e-5, atol=1e-6)
    plain = forward_in_batches(network, tokens, grid=GRID, batch_size=64, device="cpu")
    assert set(plain) == {"logits", "features"}
    np.testing.assert_allclose(plain["logits"], out["logits"], rtol=1e-5, atol=1e-6)
    empty = forward_in_batches(network, tokens[:0], grid=GRID, batch_size=4, device="cpu", return_maps=True)
    assert empty["logits"].shape == (0, 3) and empty["maps"].shape == (0, 8, 2, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_streaming_and_eager_paths_train_identically():
    # n=29, batch 6: four graphed full-size steps per epoch and an eager final batch of 5.
    tokens, y = _separable(n=29)
    cuda = dict(TRAIN, batch_size=6, device="cuda", epochs=6)
    states = {}
    for name, options in {"graphs": {}, "eager": dict(cuda_graphs=False), "streaming": dict(resident=False)}.items():
        network = _dense()
        train_network(network, tokens, y, **cuda, **options)
        states[name] = network_state(network)
    for name in ("eager", "streaming"):
        for key, value in states["graphs"].items():
            np.testing.assert_allclose(states[name][key], value, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_learns_what_cpu_training_learns():
    tokens, y = _separable()
    predictions = []
    for device in ("cpu", "cuda"):
        network = _dense()
        train_network(network, tokens, y, **dict(TRAIN, epochs=10, device=device))
        logits = forward_in_batches(network, tokens, grid=GRID, batch_size=16, device=device)["logits"]
        predictions.append(logits.argmax(1))
    assert (predictions[0] == y).mean() == 1.0 and (predictions[1] == y).mean() == 1.0


def test_thread_stable_sum_is_the_sum():
    from qpm_sklearn.training import thread_stable_sum

    values = torch.randn(3, 70001, generator=torch.Generator().manual_seed(0))
    expected = values.double().sum().item()
    assert thread_stable_sum(values).item() == pytest.approx(expected, rel=1e-5, abs=1e-2)
    assert thread_stable_sum(torch.ones(5)).item() == 5.0


def test_weight_two_equals_a_duplicated_sample_in_every_loss_term():
    from qpm_sklearn.training import _loss_terms

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=generator)
    maps = torch.rand(6, 4, 2, 2, generator=generator)
    features = maps.mean((2, 3))
    head_weight = torch.randn(3, 4, generator=generator)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    weight = torch.tensor([1.0, 2.0, 1.0, 1.0, 2.0, 1.0])
    duplicated = torch.tensor([0, 1, 1, 2, 3, 4, 4, 5])
    options = dict(beta=0.5, maps_weight=2.0, features_weight=3.0)
    _, weighted = _loss_terms(logits, maps, features, head_weight, y, weight, **options)
    _, reference = _loss_terms(logits[duplicated], maps[duplicated], features[duplicated], head_weight,
                               y[duplicated], None, **options)  # fmt: skip
    np.testing.assert_allclose(weighted.numpy(), reference.numpy(), rtol=1e-6)
    _, unweighted = _loss_terms(logits, maps, features, head_weight, y, None, **options)
    assert not np.allclose(unweighted.numpy(), reference.numpy())
