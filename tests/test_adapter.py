"""adapter.py against a float64 numpy recomputation of docs/method.md#adapter."""

import warnings

import numpy as np
import pytest
import torch

from qpm_sklearn.adapter import (
    DenseHead,
    QPMNetwork,
    SparseHead,
    TokenMLP,
    load_network_state,
    network_state,
)

EPS = 1e-5  # BatchNorm default


def _numpy_mlp(mlp, tokens, *, train, stats=None):
    """Float64 reference: Linear -> BN -> ReLU blocks, BN over all B*P token rows.

    ``train`` uses batch statistics (biased variance) and appends them to ``stats``;
    eval uses the module's running statistics.
    """
    batch, n_tokens, dim = tokens.shape
    h = tokens.reshape(batch * n_tokens, dim).astype(np.float64)
    modules = list(mlp.layers)
    for linear, norm in zip(modules[0::3], modules[1::3]):
        h = h @ linear.weight.detach().double().numpy().T  # no bias: BatchNorm removes it
        if train:
            mean, var = h.mean(0), h.var(0)
            stats.append((mean, h.var(0, ddof=1)))
        else:
            mean, var = norm.running_mean.double().numpy(), norm.running_var.double().numpy()
        gamma, beta = norm.weight.detach().double().numpy(), norm.bias.detach().double().numpy()
        h = (h - mean) / np.sqrt(var + EPS) * gamma + beta
        h = np.maximum(h, 0.0)
    return h.reshape(batch, n_tokens, -1)


def _randomise_bn(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for norm in module.modules():
        if isinstance(norm, torch.nn.BatchNorm1d):
            with torch.no_grad():
                norm.weight.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(norm.num_features, generator=generator) * 0.3)
                norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
                norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)


@pytest.fixture
def dense_network():
    torch.manual_seed(0)
    network = QPMNetwork(TokenMLP(6, 10, 7, 3), DenseHead(7, 4, dropout=0.0))
    _randomise_bn(network)
    return network


def _tokens(batch=5, grid=(2, 3), dim=6, seed=1):
    return np.random.default_rng(seed).normal(size=(batch, grid[0] * grid[1], dim)).astype(np.float32)


def test_token_mlp_structure():
    mlp = TokenMLP(6, 10, 7, 3)
    kinds = [type(m) for m in mlp.layers]
    assert kinds == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU] * 3
    widths = [(m.in_features, m.out_features) for m in mlp.layers if isinstance(m, torch.nn.Linear)]
    assert widths == [(6, 10), (10, 10), (10, 7)]
    assert all(m.bias is None for m in mlp.layers if isinstance(m, torch.nn.Linear))
    single = TokenMLP(6, 10, 7, 1)
    assert [(m.in_features, m.out_features) for m in single.layers if isinstance(m, torch.nn.Linear)] == [(6, 7)]
    norm = mlp.layers[1]
    assert norm.eps == EPS and norm.momentum == 0.1
    with pytest.raises(ValueError, match="n_layers"):
        TokenMLP(6, 10, 7, 0)


def test_network_train_mode_matches_float64_reference(dense_network):
    tokens = _tokens()
    grid = (2, 3)
    running_before = [m.running_mean.clone() for m in dense_network.mlp.layers if isinstance(m, torch.nn.BatchNorm1d)]
    var_before = [m.running_var.clone() for m in dense_network.mlp.layers if isinstance(m, torch.nn.BatchNorm1d)]
    dense_network.train()
    logits, maps, features = dense_network(torch.from_numpy(tokens), grid)

    stats = []
    out = _numpy_mlp(dense_network.mlp, tokens, train=True, stats=stats)  # (B, P, N_f)
    expected_maps = out.transpose(0, 2, 1).reshape(5, 7, *grid)  # token p = row * w + col
    expected_features = out.mean(1)
    head = dense_network.head.linear
    expected_logits = expected_features @ head.weight.detach().double().numpy().T + head.bias.detach().double().numpy()
    np.testing.assert_allclose(maps.detach().numpy(), expected_maps, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features.detach().numpy(), expected_features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits.detach().numpy(), expected_logits, rtol=1e-4, atol=1e-5)
    assert maps.shape == (5, 7, 2, 3) and (maps >= 0).all()
    # Running statistics: momentum 0.1 with the unbiased variance of the B*P rows.
    norms = [m for m in dense_network.mlp.layers if isinstance(m, torch.nn.BatchNorm1d)]
    for norm, (mean, unbiased_var), mean0, var0 in zip(norms, stats, running_before, var_before):
        np.testing.assert_allclose(norm.running_mean.numpy(), 0.9 * mean0.numpy() + 0.1 * mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(norm.running_var.numpy(), 0.9 * var0.numpy() + 0.1 * unbiased_var, rtol=1e-4)


def test_network_eval_mode_uses_running_statistics(dense_network):
    tokens = _tokens(batch=3)
    dense_network.eval()
    with torch.no_grad():
        logits, maps, features = dense_network(torch.from_numpy(tokens), (2, 3))
    out = _numpy_mlp(dense_network.mlp, tokens, train=False)
    np.testing.assert_allclose(features.numpy(), out.mean(1), rtol=1e-4, atol=1e-5)
    # Eval statistics do not depend on the batch: one sample alone gives the same output.
    with torch.no_grad():
        alone = dense_network(torch.from_numpy(tokens[1:2]), (2, 3))[0]
    np.testing.assert_allclose(alone.numpy(), logits[1:2].numpy(), rtol=1e-5, atol=1e-6)


def test_dense_head_dropout_and_weight():
    head = DenseHead(8, 3, dropout=0.5)
    assert head.weight is head.linear.weight and head.weight.shape == (3, 8)
    features = torch.ones(200, 8)
    head.train()
    _, tilde = head(features)
    kept = tilde != 0
    assert 0.3 < kept.float().mean() < 0.7
    np.testing.assert_allclose(tilde[kept].numpy(), 2.0)  # inverted dropout scaling 1/(1-p)
    head.eval()
    logits, tilde = head(features)
    assert torch.equal(tilde, features)
    np.testing.assert_allclose(logits.detach().numpy(), (features @ head.weight.T + head.linear.bias).detach().numpy())


def test_sparse_head_matches_standardised_assignment():
    rng = np.random.default_rng(0)
    assignment = (rng.random((4, 6)) < 0.5).astype(np.float32)
    mean = rng.normal(size=6)
    std = rng.random(6) + 0.1
    std[2] = 0.0  # clamped to 1e-6
    bias = rng.normal(size=4)
    features = rng.random((5, 6))
    head = SparseHead(assignment, mean, std, bias=bias, dropout=0.0)
    logits, tilde = head(torch.as_tensor(features, dtype=torch.float32))
    features32 = features.astype(np.float32).astype(np.float64)
    z = (features32 - mean.astype(np.float32)) / np.maximum(std.astype(np.float32), 1e-6)
    expected = z @ assignment.T.astype(np.float64) + bias
    np.testing.assert_allclose(logits.numpy(), expected, rtol=1e-5, atol=1e-3)
    assert torch.equal(tilde, torch.as_tensor(features, dtype=torch.float32))
    assert head.weight.shape == (4, 6)
    # Without bias: no bias term at all.
    no_bias = SparseHead(assignment, mean, np.ones(6))
    np.testing.assert_allclose(
        no_bias(torch.as_tensor(features, dtype=torch.float32))[0].numpy(),
        (features32 - mean.astype(np.float32)) @ assignment.T,
        rtol=1e-5,
        atol=1e-5,
    )


def test_sparse_head_frozen_and_trainable_statistics():
    weight, mean, std = np.eye(3, dtype=np.float32), np.zeros(3), np.ones(3)
    frozen = SparseHead(weight, mean, std, bias=np.zeros(3))
    assert list(frozen.parameters()) == []
    assert {"weight", "bias", "mean", "std"} <= set(frozen.state_dict())
    trainable = SparseHead(weight, mean, std, bias=np.zeros(3), train_stats=True, dropout=0.1)
    names = {name for name, _ in trainable.named_parameters()}
    assert names == {"mean", "std"}
    assert not trainable.weight.requires_grad and not trainable.bias.requires_grad
    with pytest.raises(ValueError, match="mean"):
        SparseHead(weight, np.zeros(2), std)
    with pytest.raises(ValueError, match="bias"):
        SparseHead(weight, mean, std, bias=np.zeros(5))
    with pytest.raises(ValueError, match="weight"):
        SparseHead(np.zeros(3), mean, std)


def test_sparse_head_trains_copies_of_its_arrays():
    # The fitted arrays of an estimator (float32, possibly read-only memory maps) build the
    # head: training its statistics must not write into them, and reading them must not warn.
    weight, mean, std = np.eye(3, dtype=np.float32), np.zeros(3, np.float32), np.ones(3, np.float32)
    for array in (weight, mean, std):
        array.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        head = SparseHead(weight, mean, std, train_stats=True)
    mean.flags.writeable = std.flags.writeable = True
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    head(torch.ones(2, 3))[0].sum().backward()
    optimizer.step()
    assert not torch.equal(head.mean.detach(), torch.zeros(3))
    np.testing.assert_array_equal(mean, np.zeros(3))
    np.testing.assert_array_equal(std, np.ones(3))


def test_selected_channels_restrict_maps_and_features(dense_network):
    tokens = torch.from_numpy(_tokens())
    selected = np.array([5, 0, 3])
    sparse = QPMNetwork(
        dense_network.mlp, SparseHead(np.ones((4, 3)), np.zeros(3), np.ones(3)), selected=selected
    ).eval()
    dense_network.eval()
    with torch.no_grad():
        _, maps, features = dense_network(tokens, (2, 3))
        logits_s, maps_s, features_s = sparse(tokens, (2, 3))
    assert maps_s.shape == (5, 3, 2, 3)
    torch.testing.assert_close(maps_s, maps[:, selected])
    torch.testing.assert_close(features_s, features[:, selected])
    torch.testing.assert_close(logits_s, features[:, selected].sum(1, keepdim=True).expand(5, 4))
    assert "selected" not in sparse.state_dict()


def test_grid_must_match_tokens(dense_network):
    with pytest.raises(ValueError, match="grid"):
        dense_network(torch.from_numpy(_tokens()), (3, 3))


def test_network_state_round_trip(dense_network):
    tokens = torch.from_numpy(_tokens())
    dense_network.train()
    dense_network(tokens, (2, 3))  # move the running statistics
    state = network_state(dense_network)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert all(v.dtype == np.float32 for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert any(k.endswith("running_var") for k in state)
    torch.manual_seed(123)
    fresh = QPMNetwork(TokenMLP(6, 10, 7, 3), DenseHead(7, 4, dropout=0.0))
    load_network_state(fresh, state)
    dense_network.eval()
    fresh.eval()
    with torch.no_grad():
        for a, b in zip(dense_network(tokens, (2, 3)), fresh(tokens, (2, 3))):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="missing"):
        load_network_state(fresh, {k: v for k, v in state.items() if "head" not in k})
    bad = dict(state)
    bad["head.linear.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError, match="head.linear.bias"):
        load_network_state(fresh, bad)


def test_seeded_init_without_global_rng_reproduces_pytorch_default_init():
    from qpm_sklearn.adapter import empty_network, init_parameters

    build = lambda: QPMNetwork(TokenMLP(6, 10, 7, 3), DenseHead(7, 4))  # noqa: E731
    with torch.random.fork_rng():
        torch.manual_seed(5)
        reference = build()  # PyTorch's own initialisation from the global RNG
    torch.manual_seed(1)
    expected_next = torch.rand(2)
    torch.manual_seed(1)
    network = init_parameters(empty_network(build).to_empty(device="cpu"), torch.Generator().manual_seed(5))
    assert torch.equal(torch.rand(2), expected_next), "init must not draw from the global RNG"
    for (name, value), (other, ref) in zip(network.state_dict().items(), reference.state_dict().items()):
        assert name == other and torch.equal(value, ref), name


def test_mlp_from_state_reads_the_architecture_and_copies_the_arrays(dense_network):
    from qpm_sklearn.adapter import mlp_from_state

    state = network_state(dense_network.mlp)
    mlp = mlp_from_state(state)
    assert [(m.in_features, m.out_features) for m in mlp.layers if isinstance(m, torch.nn.Linear)] == [
        (6, 10), (10, 10), (10, 7)]  # fmt: skip
    tokens = torch.as_tensor(_tokens())
    dense_network.eval(), mlp.eval()
    assert torch.equal(mlp(tokens), dense_network.mlp(tokens))
    with torch.no_grad():
        mlp.layers[0].weight.add_(1.0)
    np.testing.assert_array_equal(state["layers.0.weight"], network_state(dense_network.mlp)["layers.0.weight"])
    with pytest.raises(ValueError, match="not the state of a TokenMLP"):
        mlp_from_state({"linear.weight": np.zeros((2, 2))})


def test_thread_stable_batch_norm_matches_pytorch_batch_norm():
    from qpm_sklearn.adapter import _thread_stable_batch_norm

    rows = torch.randn(40, 5, generator=torch.Generator().manual_seed(0)) * 3 + 1
    native, ours = torch.nn.BatchNorm1d(5), torch.nn.BatchNorm1d(5)
    _randomise_bn(native), _randomise_bn(ours)
    for _ in range(2):  # running statistics accumulate the same way
        np.testing.assert_allclose(_thread_stable_batch_norm(rows, ours).detach(), native(rows).detach(),
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(ours.running_mean, native.running_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.running_var, native.running_var, rtol=1e-5, atol=1e-6)
    assert int(ours.num_batches_tracked) == int(native.num_batches_tracked) == 2
