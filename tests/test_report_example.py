"""examples/global_explanations.py: the planted parts are found and named, the report is written."""

import importlib.util
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "global_explanations.py"


def test_global_explanations_example_names_the_planted_parts(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("global_explanations", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--out", str(tmp_path), "--n-samples", "200", "--no-screenshot"])
    atlas, names, parts = result["atlas"], result["names"], result["parts"]
    assert result["report"].is_file() and "report:" in capsys.readouterr().out
    assert len(names) >= 3, names  # (4 of 4 on the reference machine)
    for feature, name in names.items():
        i = atlas.feature_index(feature)
        # the prototype planted on the peak cell of each of the feature's top images
        on_peak = [[p for p, r, c in parts[row] if (r, c) == tuple(peak)] for row, peak in zip(atlas.top_samples[i], atlas.peaks[i])]
        planted = [hit[0] if hit else -1 for hit in on_peak]
        best = np.bincount([p for p in planted if p >= 0], minlength=4).argmax()
        assert name.startswith(example.PART_NAMES[best] + " (")
