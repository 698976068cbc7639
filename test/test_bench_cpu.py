"""The speed benchmarks' bookkeeping (which networks, which ratios) without timing anything, and the GPU
benchmark's check mode run on the CPU."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCH))  # as `python bench/NAME.py` has it (`import _common`)
    spec = importlib.util.spec_from_file_location(f"mcn_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_model_cpu_networks_and_headlines(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch, "model_cpu")
    quick = bench.mcn_networks(True)
    assert sorted(quick) == [
        "resnet18_det1_pose_512",
        "resnet18_det80_512",
        "resnet18_det80_seg80_pose_512",
        "resnet18_det80_seg80_pose_light_512",
        "resnet18_seg80_512",
    ]
    assert quick["resnet18_det80_512"].tasks == {"detection"}
    assert quick["resnet18_seg80_512"].tasks == {"segmentation"}
    pose = quick["resnet18_det1_pose_512"]
    assert pose.tasks == {"detection", "pose"} and pose.detection is not None
    assert pose.detection.classes == ("person",)
    full = bench.mcn_networks(False)
    assert "dla34_det80_512" in full and "dla34_only_det80_512" not in full  # shipped configs are reused

    def net(kind: str, ms: float) -> dict[str, object]:
        return {"kind": kind, "latency": {"square": {"median_ms": ms}}}

    nets = {
        "resnet18_det80_seg80_pose_512": net("mcn", 100.0),
        "resnet18_det80_512": net("mcn", 80.0),
        "resnet18_seg80_512": net("mcn", 70.0),
        "resnet18_det1_pose_512": net("mcn", 90.0),
        "resnet18_det80_seg80_pose_light_512": net("mcn", 80.0),
        "yolo26n": net("yolo26n", 30.0),
        "yolo26n-pose": net("yolo26n", 40.0),
        "yolo26n-sem": net("yolo26n", 50.0),
    }
    assert bench.headline(nets, "square") == {
        "mcn_vs_stn_speedup": 2.4,
        "mcn_vs_yolo26n_speedup": 1.2,
        "mcn_vs_yolo11n_speedup": None,  # not measured: no figure rather than a wrong one
        "light_vs_yolo26n_speedup": 1.5,
    }
    times = {f"{name}@square": [v["latency"]["square"]["median_ms"]] * 3 for name, v in nets.items()}
    times["resnet18_det80_seg80_pose_512@square"] = [100.0, 80.0, 120.0]  # rounds of one run
    spread = bench.per_round(nets, times, "square", 3)
    assert spread["mcn_vs_stn_speedup"] == [2.0, 2.4, 3.0]  # 240 / (120, 100, 80)
    assert spread["mcn_vs_yolo26n_speedup"] == [1.0, 1.2, 1.5] and "mcn_vs_yolo11n_speedup" not in spread


def test_e2e_speedups_pick_the_fastest_mcn_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch, "e2e_cpu")
    rows = {
        "torch:mcn@640x480": {"size": "640x480", "median_ms": 200.0},
        "torch:yolo26n_x3@640x480": {"size": "640x480", "median_ms": 250.0},
        "onnxruntime:mcn@640x480": {"size": "640x480", "median_ms": 160.0},
        "onnxruntime:yolo26n_x3@640x480": {"size": "640x480", "median_ms": 240.0},
        "torch:mcn_light@640x480": {"size": "640x480", "median_ms": 125.0},
    }
    out = bench.speedups(rows)["640x480"]
    assert out["light"] == {"backend": "torch", "mcn_ms": 125.0, "yolo26n_x3_ms": 250.0, "speedup": 2.0}
    assert out["torch"]["speedup"] == 1.25 and out["onnxruntime"]["speedup"] == 1.5
    assert out["best"]["backend"] == "onnxruntime" and out["best"]["speedup"] == 1.5
    assert out["best_vs_best"] == {
        "mcn_backend": "onnxruntime",
        "yolo26n_x3_backend": "onnxruntime",
        "speedup": 1.5,
    }
    rows["onnxruntime:yolo26n_x3@640x480"]["median_ms"] = 300.0  # YOLO fastest in torch, the MCN in ORT
    both = bench.speedups(rows)["640x480"]["best_vs_best"]
    assert both == {"mcn_backend": "onnxruntime", "yolo26n_x3_backend": "torch", "speedup": 1.562}
    rows["onnxruntime_int8:mcn@640x480"] = {"size": "640x480", "median_ms": 80.0}
    rows["onnxruntime_int8:yolo26n_x3@640x480"] = {"size": "640x480", "median_ms": 200.0}
    with_int8 = bench.speedups(rows)["640x480"]
    assert with_int8["best"]["backend"] == "onnxruntime_int8" and with_int8["best"]["speedup"] == 2.5
    assert with_int8["best_vs_best"] == {
        "mcn_backend": "onnxruntime_int8",
        "yolo26n_x3_backend": "onnxruntime_int8",
        "speedup": 2.5,
    }
    assert with_int8["best_vs_best_fp32"] == both  # int8 left out
    # The lighter variant's fastest fp32 backend against YOLO's fastest fp32 one (torch, 250 ms here).
    assert with_int8["light_best_vs_best_fp32"] == {
        "mcn_backend": "torch",
        "yolo26n_x3_backend": "torch",
        "speedup": 2.0,
    }
    rows["onnxruntime:mcn_light@640x480"] = {"size": "640x480", "median_ms": 100.0}
    light = bench.speedups(rows)["640x480"]
    assert light["light_onnxruntime"]["speedup"] == 3.0  # against YOLO in ONNX Runtime, 300 ms
    assert light["light_best_vs_best_fp32"] == {
        "mcn_backend": "onnxruntime",
        "yolo26n_x3_backend": "torch",
        "speedup": 2.5,
    }
    assert bench.headlines(bench.speedups(rows))["e2e_light_fp32_best_vs_best_speedup"] == 2.5
    # bf16 (PyTorch) is a reduced precision too: in the overall best, never in the fp32 figures.
    fp32_only = bench.speedups(rows)["640x480"]
    rows["torch_bf16:mcn@640x480"] = {"size": "640x480", "median_ms": 50.0}
    rows["torch_bf16:yolo26n_x3@640x480"] = {"size": "640x480", "median_ms": 400.0}
    rows["torch_bf16:mcn_light@640x480"] = {"size": "640x480", "median_ms": 40.0}
    with_bf16 = bench.speedups(rows)["640x480"]
    assert with_bf16["torch_bf16"]["speedup"] == 8.0
    assert with_bf16["best"]["backend"] == "torch_bf16"
    # Each side's fastest: the MCN in bf16 (50 ms) against YOLO in int8 (200 ms), not YOLO's bf16.
    assert with_bf16["best_vs_best"] == {
        "mcn_backend": "torch_bf16",
        "yolo26n_x3_backend": "onnxruntime_int8",
        "speedup": 4.0,
    }
    assert with_bf16["best_vs_best_fp32"] == fp32_only["best_vs_best_fp32"]
    assert with_bf16["light_best_vs_best_fp32"] == fp32_only["light_best_vs_best_fp32"]
    assert with_bf16["light_torch_bf16"]["speedup"] == 10.0
    assert bench.headlines(bench.speedups(rows))["e2e_bf16_vs_yolo26n_speedup"] == 8.0
    # The compiled forward is reported beside, never in a headline (YOLO runs uncompiled).
    before = bench.headlines(bench.speedups(rows))
    rows["torch_bf16:mcn_compiled@640x480"] = {"size": "640x480", "median_ms": 25.0}
    with_compiled = bench.speedups(rows)["640x480"]
    assert with_compiled["compiled_bf16"] == {
        "backend": "torch_bf16", "mcn_ms": 25.0, "yolo26n_x3_ms": 400.0, "speedup": 16.0,
    }  # fmt: skip
    assert with_compiled["best"]["backend"] == "torch_bf16" and with_compiled["best"]["mcn_ms"] == 50.0
    assert bench.headlines(bench.speedups(rows)) == before
    # The lighter variant in int8: against YOLO in int8 (200 ms), never in the fp32 comparison.
    assert bench.headlines(bench.speedups(rows))["e2e_light_int8_vs_yolo26n_speedup"] is None
    rows["onnxruntime_int8:mcn_light@640x480"] = {"size": "640x480", "median_ms": 40.0}
    light_int8 = bench.speedups(rows)["640x480"]
    assert light_int8["light_onnxruntime_int8"] == {
        "backend": "onnxruntime_int8", "mcn_ms": 40.0, "yolo26n_x3_ms": 200.0, "speedup": 5.0,
    }  # fmt: skip
    assert light_int8["light_best_vs_best_fp32"] == light["light_best_vs_best_fp32"]
    assert bench.headlines(bench.speedups(rows))["e2e_light_int8_vs_yolo26n_speedup"] == 5.0
    del rows["onnxruntime_int8:mcn_light@640x480"]
    # YOLO in ultralytics' own ONNX Runtime sessions is reported beside, never in a headline.
    before = bench.headlines(bench.speedups(rows))
    rows[f"onnxruntime:{bench.ULTRALYTICS_SESSIONS}@640x480"] = {"size": "640x480", "median_ms": 480.0}
    beside = bench.speedups(rows)["640x480"]
    assert beside["onnxruntime"]["yolo26n_x3_ms"] == 300.0 and beside["onnxruntime"]["speedup"] == 1.875
    assert beside["onnxruntime"]["yolo26n_x3_ultralytics_sessions_ms"] == 480.0
    assert beside["onnxruntime"]["speedup_vs_ultralytics_sessions"] == 3.0  # 480 / 160
    assert "speedup_vs_ultralytics_sessions" not in beside["torch"]
    assert bench.headlines(bench.speedups(rows)) == before
    image = bench.camera_image((480, 640))
    assert image.shape == (480, 640, 3) and image.std() > 20  # texture, not a flat frame


def test_precision_ratios_compare_like_with_like(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch, "precision_cpu")
    ms = {"mcn@fp32": 150.0, "mcn@bf16": 75.0, "yolo26n_x3@fp32": 120.0, "yolo26n_x3@bf16": 90.0}
    rows = {f"forward:{key}": {"median_ms": value} for key, value in ms.items()}
    rows |= {f"e2e:{key}": {"median_ms": 2 * value} for key, value in ms.items()}
    ratios = bench.ratios(rows, "forward")
    assert ratios == {
        "mcn_bf16_speedup": 2.0,
        "yolo26n_x3_bf16_speedup": round(120 / 90, 3),
        "mcn_vs_yolo26n_fp32": 0.8,
        "mcn_vs_yolo26n_bf16": 1.2,  # both in bf16: the like-for-like figure
        "mcn_bf16_vs_yolo26n_fp32": 1.6,
    }
    assert bench.ratios(rows, "e2e") == ratios  # each kind reads its own rows


def test_node_cpu_overhead_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch, "node_cpu")
    steady = bench.overhead_figures([100.0] * 9, [110.0] * 9)
    assert steady == {
        "overhead_ratio": 0.1,
        "overhead_ratio_ci95": [0.1, 0.1],
        "overhead_ratio_paired_median": 0.1,
    }
    predict = [100.0, 120.0, 90.0, 130.0, 105.0, 95.0, 140.0, 100.0]
    jitter = [3.0, -4.0, 0.0, 6.0, -2.0, 1.0, -5.0, 2.0]
    node = [p * 1.2 + j for p, j in zip(predict, jitter, strict=True)]  # the machine drifts under both
    noisy = bench.overhead_figures(predict, node)
    low, high = noisy["overhead_ratio_ci95"]
    assert 0.18 < noisy["overhead_ratio_paired_median"] < 0.22
    assert low <= noisy["overhead_ratio"] <= high and low < high
    with pytest.raises(ValueError, match="as many"):
        bench.overhead_figures([1.0, 2.0], [1.0])
    # The node against its own call, beside the issue's ratio against `predict` in the bench's process.
    split = {"pairs": 3, "lockstep_p50_ms": 33.0, "predict_p50_ms": 30.0,
             "node_received_to_published_p50_ms": 30.4, "node_processing_p50_ms": 29.5,
             "node_inference_p50_ms": 28.0, "transport_and_driver_ms": 2.6, "node_outside_inference_ms": 1.5,
             "inference_minus_predict_ms": -2.0}  # fmt: skip
    assert bench.own_call_ratio(split) == pytest.approx(5.0 / 28.0, abs=1e-3)
    assert "the node's overhead is 0.179" in " ".join(bench.split_lines(split))


def test_model_gpu_headlines_per_precision_and_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch, "model_gpu")

    def net(kind: str, fp32: float, fp16: float) -> dict[str, object]:
        both = {"fp32/b1": fp32, "fp16/b1": fp16}
        shapes = {s: {"square": {"median_ms": ms}, "camera": {"median_ms": ms / 2}} for s, ms in both.items()}
        return {"kind": kind, "latency": shapes}

    nets = {
        "resnet18_det80_seg80_pose_512": net("mcn", 10.0, 5.0),
        "resnet18_det80_512": net("mcn", 8.0, 4.0),
        "resnet18_seg80_512": net("mcn", 7.0, 3.0),
        "resnet18_det1_pose_512": net("mcn", 9.0, 3.0),
        "dla34_det80_seg80_pose_512": net("mcn", 20.0, 10.0),
        "dla34_det80_512": net("mcn", 16.0, 10.0),
        "dla34_seg80_512": net("mcn", 14.0, 10.0),
        "dla34_det1_pose_512": net("mcn", 12.0, 10.0),
        "yolo26n": net("yolo26n", 3.0, 2.0),
        "yolo26n-pose": net("yolo26n", 4.0, 2.0),
        "yolo26n-sem": net("yolo26n", 5.0, 2.0),
    }
    out = bench.headlines(nets)
    assert set(out) == {"fp16/b1", "fp32/b1"}
    fp32, fp16 = out["fp32/b1"]["square"], out["fp16/b1"]["square"]
    assert fp32["mcn_vs_stn_speedup"] == 2.4 and fp32["dla34_mcn_vs_stn_speedup"] == 2.1
    assert fp32["mcn_vs_yolo26n_speedup"] == 1.2 and fp32["mcn_vs_yolo11n_speedup"] is None
    assert fp16["mcn_vs_stn_speedup"] == 2.0 and fp16["dla34_mcn_vs_stn_speedup"] == 3.0
    assert fp16["mcn_vs_yolo26n_speedup"] == 1.2
    assert out["fp32/b1"]["camera"] == fp32  # every network half as long: the same ratios


def test_model_gpu_script_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The GPU benchmark cannot run here for real; its check mode on the CPU goes through the same code
    (building, timing, record, tables), so that the script is ready when a GPU is at hand."""
    import json

    import torch

    bench = _load(monkeypatch, "model_gpu")
    if not torch.cuda.is_available():
        assert bench.main(["--out", str(tmp_path)]) == 2, "no CUDA: exits 2"
        assert not (tmp_path / "model_gpu.json").exists(), "and writes nothing"
    args = ["--device", "cpu", "--quick", "--batches", "1", "--rounds", "1", "--warmup", "0"]
    assert bench.main([*args, "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "model_gpu.json").read_text())
    assert record["device"] == {"device": "cpu"} and record["quick"] is True
    mcn = record["networks"]["resnet18_det80_seg80_pose_512"]
    assert mcn["latency"]["fp32/b1"]["square"]["median_ms"] > 0 and mcn["gflops"]["square"] > 20
    assert record["headline"]["fp32/b1"]["camera"]["mcn_vs_stn_speedup"] > 0
    assert list(record["accuracy"]) == ["fp32"] and record["accuracy"]["fp32"]["num_images"] == 200
    assert record["accuracy"]["fp32"]["bbox_AP"] > 0.3  # the demo weights (0.42 recorded)
    assert "fp32/b1" in (tmp_path / "model_gpu.md").read_text()


def test_gpu_overheads_decoding_contenders(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The GPU overheads benchmark's decoding and predict parts on the CPU: both peak searches on the demo
    weights' outputs for a few scenes, the same results, and each contender decodes; the predict contenders
    (graphs refused here, so all eager) compared and callable (the forward part needs CUDA)."""
    import torch

    bench = _load(monkeypatch, "gpu_overheads")
    if not torch.cuda.is_available():
        assert bench.main(["--out", str(tmp_path)]) == 2, "no CUDA: exits 2"
        assert not (tmp_path / "gpu_overheads.json").exists(), "and writes nothing"
    images = bench.camera_scenes(tmp_path / "scenes", 3)
    calls, checks = bench.decode_contenders(torch.device("cpu"), images)
    assert set(calls) == {"512:listing", "512:topk", "128:listing", "128:topk"}
    for check in checks.values():
        assert check["same_counts"] and check["detections"] > 0
        assert check["max_box_difference_px"] == 0 and check["max_keypoint_difference"] == 0
    for call in calls.values():
        (result,) = call()
        assert result.detections is not None and result.segmentation is not None
    with pytest.warns(UserWarning, match="CUDA graphs need a CUDA device"):  # off CUDA: eager, with a warning
        calls, checks, graphed = bench.predict_contenders(torch.device("cpu"), images[:2])
    assert set(calls) == {f"{side}:{mode}" for side in (512, 128) for mode in bench.PREDICT_MODES}
    assert set(graphed) == set(checks), "each graphed mode's predictor, whose note the record keeps"
    assert all("CUDA graphs need a CUDA device" in (p.cuda_graphs_note or "") for p in graphed.values())
    assert set(checks) == {f"{side}:{mode}" for side in (512, 128) for mode in ("graphs", "graph_decoding")}
    for check in checks.values():
        assert check["same_counts"] and check["same_segmentation"] and check["detections"] > 0
    result = calls["128:graph_decoding"]()
    assert type(result).__name__ == "Results" and result.poses is not None


def test_sample_grid_bench_compares_both_ways(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """bench/sample_grid.py: each case's two ways give the same map, and the record and table are written."""
    import json

    bench = _load(monkeypatch, "sample_grid")
    assert bench.main(["--rounds", "2", "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "sample_grid.json").read_text())
    assert set(record["cases"]) == {"640x480@128", "640x480@512", "1280x720@512"}
    for row in record["cases"].values():
        assert row["same"] and row["runs_us"] > 0 and row["indexing_us"] > 0
    assert "1280x720 | 512 | 128x72" in (tmp_path / "sample_grid.md").read_text()


def test_decode_ab_runs_a_commits_decoding_beside_this_trees(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """bench/decode_ab.py against HEAD (the same code as this tree's in a clean checkout): every setting
    timed for both and the same results; a base git does not know ends with its message."""
    bench = _load(monkeypatch, "decode_ab")
    argv = ["--base", "HEAD", "--images", "1", "--rounds", "1", "--results", str(tmp_path)]
    assert bench.main(argv) == 0
    record = json.loads((tmp_path / "decode_ab.json").read_text())
    assert set(record["settings"]) == {"demo@128", "random@128", "demo@512", "random@512"}
    for row in record["settings"].values():
        assert row["same_results"] and row["median_ms"]["base"] > 0 and row["median_ms"]["head"] > 0
    assert record["settings"]["demo@512"]["network_input"] == [384, 512]
    assert "| demo (trained) | 512x384 |" in (tmp_path / "decode_ab.md").read_text()
    with pytest.raises(SystemExit, match="decode_ab: git show no-such-commit"):
        bench.main(["--base", "no-such-commit", "--results", str(tmp_path)])


def test_git_commit_ignores_only_the_given_folders(tmp_path: Path) -> None:
    """A checkout with changed results only is clean for the benchmarks' record; a changed source is dirty."""
    import subprocess

    from mcn_ros.bag.provenance import git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "a.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "module.py").write_text("y = 1\n")
    git("init", "-q")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "empty")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "files")
    head = git_commit(tmp_path)
    assert head is not None and len(head) == 40
    (tmp_path / "bench" / "results" / "a.json").write_text('{"figure": 1}')
    assert git_commit(tmp_path, ignore=("bench/results",)) == head
    assert git_commit(tmp_path) == f"{head}-dirty"
    assert git_commit(tmp_path / "pkg", ignore=("../bench/results",)) == head, "relative to its root"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path, ignore=("bench/results",)) == f"{head}-dirty"
    # From a subfolder (training's checkpoints ask from theirs) a change anywhere in the tree counts.
    assert git_commit(tmp_path / "pkg") == f"{head}-dirty"
    assert git_commit(tmp_path / "pkg", ignore=("results",)) == f"{head}-dirty"


def test_interleaved_rounds_vary_each_contenders_predecessor(monkeypatch: pytest.MonkeyPatch) -> None:
    timing = _load(monkeypatch, "_timing")
    names = ["mcn", "mcn_compiled", "yolo26n"]
    orders = timing.round_orders(names, 60)
    assert all(sorted(order) == sorted(names) for order in orders)  # each once per round
    assert orders == timing.round_orders(names, 60)  # seeded: a rerun times the same order
    sequence = [name for order in orders for name in order]
    follows = {(before, after): 0 for before in names for after in names if before != after}
    for before, after in itertools.pairwise(sequence):
        if before != after:
            follows[before, after] += 1
    # A rotation kept the cyclic order: each contender ran behind the same one twice as often as behind the
    # other (40 against 20 of each pair here); shuffled, about 30 of each.
    assert max(follows.values()) <= 1.5 * min(follows.values()), follows
    calls: list[str] = []
    contenders = {name: (lambda name=name: calls.append(name)) for name in names}
    times = timing.interleaved(contenders, 4, warmup=0)
    assert calls == [name for order in timing.round_orders(names, 4) for name in order]
    assert all(len(samples) == 4 for samples in times.values())


def test_e2e_markdown_names_the_backends_behind_its_headlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the MCN's fastest backend is a PyTorch one the same-backend headline is mostly ultralytics'
    postprocessing: the record says so and points at best against best."""
    bench = _load(monkeypatch, "e2e_cpu")
    at = {
        "best": {"backend": "torch_bf16", "mcn_ms": 27.0, "yolo26n_x3_ms": 300.0, "speedup": 11.1},
        "best_vs_best": {
            "mcn_backend": "torch_bf16",
            "yolo26n_x3_backend": "onnxruntime_int8",
            "speedup": 2.5,
        },
    }
    note = bench.headline_note({"speedups": {"640x480": at}})
    assert "MCN's fastest: torch_bf16" in note and "YOLO26n x3 in onnxruntime_int8" in note
    assert "postprocessing" in note
    at["best"]["backend"] = "onnxruntime_int8"
    assert "postprocessing" not in bench.headline_note({"speedups": {"640x480": at}})
    assert bench.headline_note({}) == ""


def test_readme_benchmark_summary_is_the_records(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    summary = _load(monkeypatch, "summary")
    assert summary.main(["--check"]) == 0, "README.md's headline table differs from bench/results"
    table = summary.render()
    assert (
        "`e2e_cpu` " in table
        and "`decode_share` " in table
        and len(table.splitlines()) == 2 + len(summary.ROWS)
    )
    # A record that moves changes the table: the int8 node's overhead under the target reads "met".
    results = tmp_path / "results"
    results.mkdir()
    for name in {row.record for row in summary.ROWS}:
        (results / f"{name}.json").write_text((summary.RESULTS / f"{name}.json").read_text())
    record = json.loads((results / "node_cpu_int8.json").read_text())
    for ratio, status in ((0.09, "met"), (0.2, "missed")):
        record["overhead_ratio"] = ratio
        (results / "node_cpu_int8.json").write_text(json.dumps(record))
        (line,) = [
            row for row in summary.render(results).splitlines() if row.startswith("| `overhead_ratio`, ONNX")
        ]
        assert f"{ratio:.3f} (int8) | <= 0.100: {status} |" in line
    readme = "intro\n" + summary.BEGIN + "\nold table\n" + summary.END + "\nrest\n"
    assert summary.readme_copy(summary.with_table(readme, table)) == table
    with pytest.raises(ValueError, match="no"):
        summary.readme_copy("a README without the markers")


def test_e2e_per_repeat_names_the_backend_behind_the_issues_key(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _load(monkeypatch, "e2e_cpu")
    passes = [
        {
            "e2e_vs_yolo26n_speedup": 2.45,
            "e2e_best_vs_best_speedup": 2.5,
            "e2e_vs_yolo26n_backend": "onnxruntime_int8",
        },
        {
            "e2e_vs_yolo26n_speedup": 11.3,
            "e2e_best_vs_best_speedup": 2.6,
            "e2e_vs_yolo26n_backend": "torch_bf16",
        },
    ]
    text = bench.per_repeat_text(passes)
    assert "`e2e_vs_yolo26n_speedup` 2.45 (onnxruntime_int8) / 11.3 (torch_bf16)" in text
    assert "`e2e_best_vs_best_speedup` 2.5 / 2.6" in text
    assert bench.MAX_DETECTIONS == 100
