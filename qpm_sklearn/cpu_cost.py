"""What a QPMClassifier fit costs on a CPU, and the one warning when that is long.

The adapter's work is matrix products per patch token: ``sum(w_in * w_out)`` multiply-adds
over its layers' widths ``[d, hidden_size, ..., hidden_size, n_features]``, about three
times that per training step (forward and backward). The rate that turns it into seconds
is calibrated on the measurement in docs/guide.md ("On a CPU"): one dense epoch of the
paper's configuration on CUB's 5,994 training embeddings (16 x 16 x 768) took about
20 minutes on one core of a 2-core AMD EPYC machine. The estimate is for one core; more
free cores shorten it, a busy machine lengthens it.
"""

from __future__ import annotations

import warnings

#: Multiply-adds per second of one CPU core in the adapter's training (see the module doc).
CPU_MACS_PER_SECOND = 4.2e10
#: A fit estimated above this many seconds on one core gets :class:`SlowCPUFitWarning`.
LONG_FIT_SECONDS = 300.0
#: The CPU-sized configuration of docs/guide.md ("On a CPU"), named in the warning.
CPU_SIZED_CONFIGURATION = (
    "QPMClassifier(n_features=64, n_selected=30, n_per_class=3, hidden_size=256, n_layers=2, "
    "dense_epochs=10, sparse_epochs=5) on embeddings of Dinov2Embedder(..., image_size=112)"
)


class SlowCPUFitWarning(UserWarning):
    """A fit starting on the CPU is estimated to take more than a few minutes.

    Emitted once per fit by :meth:`qpm_sklearn.QPMClassifier.fit`; silence it with
    ``warnings.filterwarnings("ignore", category=SlowCPUFitWarning)``.
    """


def estimated_cpu_seconds(
    n_samples: int, n_tokens: int, n_dims: int, *, hidden_size: int, n_features: int, n_layers: int, epochs: int
) -> float:
    """Seconds on one CPU core to train the adapter for ``epochs`` epochs over all samples.

    Parameters
    ----------
    n_samples, n_tokens, n_dims : int
        The training embeddings' shape: samples, patch tokens per sample, embedding size d.
    hidden_size, n_features, n_layers : int
        The adapter (:class:`qpm_sklearn.adapter.TokenMLP`).
    epochs : int
        Epochs of both stages together.

    Returns
    -------
    seconds : float

    Examples
    --------
    >>> round(estimated_cpu_seconds(5994, 256, 768, hidden_size=2048, n_features=512, n_layers=4, epochs=1) / 60)
    20
    """
    widths = [n_dims] + [hidden_size] * (n_layers - 1) + [n_features]
    macs_per_token = sum(width_in * width_out for width_in, width_out in zip(widths[:-1], widths[1:]))
    return 3.0 * macs_per_token * n_tokens * n_samples * epochs / CPU_MACS_PER_SECOND


def warn_if_slow_on_cpu(seconds: float, *, stacklevel: int = 2) -> None:
    """Emit :class:`SlowCPUFitWarning` when ``seconds`` (from :func:`estimated_cpu_seconds`) exceeds
    :data:`LONG_FIT_SECONDS`.

    Parameters
    ----------
    seconds : float
        The fit's estimated seconds on one core.
    stacklevel : int, default=2
        Passed to :func:`warnings.warn`.
    """
    if seconds <= LONG_FIT_SECONDS:
        return
    duration = f"{seconds / 3600:.1f} hours" if seconds >= 5400 else f"{seconds / 60:.0f} minutes"
    warnings.warn(
        f"this fit runs on the CPU and is estimated to take about {duration} of one core's time (the paper's "
        f"defaults are sized for a GPU). On a CPU use a CPU-sized configuration, e.g. {CPU_SIZED_CONFIGURATION} "
        "(docs/guide.md, 'On a CPU').",
        SlowCPUFitWarning,
        stacklevel=stacklevel + 1,
    )
