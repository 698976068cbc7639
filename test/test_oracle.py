"""Oracle round trip: training targets -> logits -> decode_batch -> Results -> evaluation recovers the GT.

If this fails, the training targets and the decoder disagree on a convention (cells, offsets, sizes,
letterbox mapping, segmentation sampling); bench/oracle.py reports the same numbers for a larger set.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mcn_training.synthetic import generate_dataset

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

ORACLE = Path(__file__).resolve().parents[1] / "bench" / "oracle.py"


def _oracle(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ORACLE.parent))  # as `python bench/oracle.py` has it (`import _common`)
    spec = importlib.util.spec_from_file_location("mcn_bench_oracle", ORACLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("orig", "input_hw", "seg_stride"),
    [
        ((120, 200), (160, 256), 1),  # landscape: scale 1.28, vertical padding
        ((75, 48), (160, 96), 2),  # portrait: scale 2, odd padding (5 px) at stride 2
    ],
)
def test_oracle_recovers_ground_truth(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    orig: tuple[int, int],
    input_hw: tuple[int, int],
    seg_stride: int,
) -> None:
    oracle = _oracle(monkeypatch)
    generate_dataset(tmp_path, 16, seed=3, image_size=orig, split="val")  # non-square: letterbox padding
    config = oracle.oracle_config(input_hw, seg_stride)
    report = oracle.run_oracle(tmp_path, "val", config)
    assert report.num_images == 16
    assert report.bbox_AP >= 0.95
    assert report.kp_AP >= 0.90
    assert report.mIoU >= 0.98


def test_oracle_main_writes_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    oracle = _oracle(monkeypatch)
    record = oracle.main(["--images", "4", "--out", str(tmp_path)])
    assert (tmp_path / "oracle.json").exists() and (tmp_path / "oracle.md").exists()
    assert {"bbox_AP", "kp_AP", "mIoU", "command", "machine", "versions"} <= set(record)
    assert "| bbox AP |" in (tmp_path / "oracle.md").read_text()
