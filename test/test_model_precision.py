"""Precision: which number format runs where, and CPU bf16 against fp32 on the same model."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mcn_ros.model import precision
from mcn_ros.model.config import ModelConfig
from mcn_ros.model.mcn import MultitaskCenterNet
from mcn_ros.model.precision import (
    Precision,
    cpu_amx_bf16,
    cpu_bf16_native,
    cpu_flags,
    cpu_int8_native,
    parse_precision,
)
from mcn_ros.model.predictor import Predictor
from mcn_ros.model.preprocess import preprocess
from mcn_ros.model.results import Results

CONFIG = Path(__file__).resolve().parents[1] / "config" / "models" / "resnet18_det1_seg1_pose_128.yaml"
CPU = torch.device("cpu")
GENOA = frozenset({"avx2", "avx512f", "avx512_bf16"})
SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"})
AVX2_ONLY = frozenset({"avx", "avx2", "fma"})


def test_cpu_flags_are_read_from_the_first_flags_line() -> None:
    text = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 avx512_bf16\n\nflags\t\t: other\n"
    assert cpu_flags(text) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags("no flags here") == frozenset()
    assert cpu_bf16_native(GENOA) and cpu_bf16_native(SAPPHIRE_RAPIDS) and not cpu_bf16_native(AVX2_ONLY)
    assert cpu_amx_bf16(SAPPHIRE_RAPIDS) and not cpu_amx_bf16(GENOA) and not cpu_amx_bf16(AVX2_ONLY)


def test_settings_parse_and_bad_ones_are_named() -> None:
    assert [parse_precision(v) for v in (False, True, "", "fp32", "fp16", "bf16")] == [
        "fp32", "fp16", "fp32", "fp32", "fp16", "bf16",
    ]  # fmt: skip
    assert parse_precision("int8") == "int8"
    with pytest.raises(ValueError, match=r"precision must be one of fp32, fp16, bf16, int8 .*'int4'"):
        parse_precision("int4")


def test_reduced_precision_only_where_the_device_has_it() -> None:
    assert Precision.resolve("bf16", CPU, flags=GENOA) == Precision("bf16", model_dtype=torch.bfloat16)
    assert Precision.resolve("bf16", CPU, flags=SAPPHIRE_RAPIDS).model_dtype == torch.bfloat16
    emulated = Precision.resolve("bf16", CPU, flags=AVX2_ONLY)
    assert emulated.name == "fp32" and emulated.model_dtype == torch.float32
    assert emulated.note is not None and "avx512_bf16" in emulated.note and "running fp32" in emulated.note
    fp16 = Precision.resolve("fp16", CPU, flags=GENOA)
    assert fp16.name == "fp32" and fp16.note is not None and "CUDA" in fp16.note
    onnx = Precision.resolve("bf16", CPU, backend="onnxruntime", flags=GENOA)
    assert onnx.name == "fp32" and onnx.note is not None and "onnxruntime" in onnx.note
    cuda, hopper = torch.device("cuda", 0), (9, 0)  # a device object only: nothing runs on it
    fp16_cuda = Precision.resolve("fp16", cuda, cuda_capability=hopper)
    assert fp16_cuda == Precision("fp16", autocast_dtype=torch.float16)
    assert Precision.resolve("bf16", cuda, cuda_capability=hopper).autocast_dtype == torch.bfloat16
    assert Precision.resolve("fp32", CPU, flags=GENOA) == Precision()


@pytest.mark.parametrize(
    ("capability", "fp16", "bf16"),
    [
        ((9, 0), True, True),  # H100 / H200
        ((8, 7), True, True),  # Jetson Orin
        ((7, 5), True, False),  # T4, GeForce 20 series: bf16 emulated
        ((7, 2), True, False),  # Jetson Xavier
        ((6, 2), True, False),  # Jetson TX2: fast fp16 before Volta
        ((6, 1), False, False),  # GeForce 10 series: fp16 at 1/64 of the fp32 rate
        ((5, 3), True, False),  # Jetson Nano
        ((5, 2), False, False),
    ],
)
def test_cuda_reduced_precision_only_where_the_gpu_computes_it_natively(
    capability: tuple[int, int], fp16: bool, bf16: bool
) -> None:
    cuda = torch.device("cuda", 0)
    for name, native, dtype in (("fp16", fp16, torch.float16), ("bf16", bf16, torch.bfloat16)):
        resolved = Precision.resolve(name, cuda, cuda_capability=capability)
        if native:
            assert resolved == Precision(name, autocast_dtype=dtype)
        else:
            assert resolved.name == "fp32" and resolved.autocast_dtype is None
            assert resolved.note is not None and f"{capability[0]}.{capability[1]}" in resolved.note
            assert resolved.note.endswith("running fp32")
            assert ("fp16 is native here" in resolved.note) == (name == "bf16" and fp16)


def test_int8_only_with_onnxruntime_on_a_cpu_with_int8_dot_products() -> None:
    assert cpu_int8_native(GENOA | {"avx512_vnni"}) and cpu_int8_native(frozenset({"avx_vnni"}))
    assert cpu_int8_native(SAPPHIRE_RAPIDS | {"amx_int8"}) and not cpu_int8_native(AVX2_ONLY)
    assert Precision.resolve("int8", CPU, "onnxruntime", flags=GENOA | {"avx512_vnni"}) == Precision("int8")
    no_vnni = Precision.resolve("int8", CPU, "onnxruntime", flags=AVX2_ONLY)
    assert no_vnni.name == "fp32" and no_vnni.note is not None and "avx512_vnni" in no_vnni.note
    torch_backend = Precision.resolve("int8", CPU, "torch", flags=GENOA | {"avx512_vnni"})
    assert (
        torch_backend.name == "fp32"
        and torch_backend.note is not None
        and "onnxruntime" in torch_backend.note
    )
    cuda = Precision.resolve("int8", torch.device("cuda", 0), "onnxruntime")
    assert cuda.name == "fp32" and cuda.note is not None


def test_cpu_bf16_where_not_native_falls_back_to_fp32_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda flags=None: False)
    config = dataclasses.replace(ModelConfig.from_yaml(CONFIG), input_size=(64, 64))
    with pytest.warns(UserWarning, match="would be emulated"):
        fallback = Predictor(MultitaskCenterNet(config), config, device="cpu", precision="bf16")
    assert fallback.precision.name == "fp32"


@pytest.mark.parametrize(("fold_bn", "flip_test"), [(True, False), (False, True)])
def test_cpu_bf16_matches_fp32(monkeypatch: pytest.MonkeyPatch, fold_bn: bool, flip_test: bool) -> None:
    """The bf16 copy against fp32 on one image (where the CPU emulates bf16 it runs slowly, but runs)."""
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda flags=None: True)
    torch.manual_seed(0)
    config = dataclasses.replace(ModelConfig.from_yaml(CONFIG), input_size=(96, 128))
    model = MultitaskCenterNet(config)
    fp32 = Predictor(model, config, device="cpu", fold_bn=fold_bn)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16 = Predictor(model, config, device="cpu", precision="bf16", fold_bn=fold_bn)
    assert bf16.precision.name == "bf16" and not [w for w in caught if "fp32" in str(w.message)]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller's module is untouched
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    batch, _ = preprocess([image], fp32.input_size([(90, 120)]), config.mean, config.std, CPU, "rgb", True)
    reference = fp32.forward(batch, config.tasks, flip_test=flip_test)
    reduced = bf16.forward(batch, config.tasks, flip_test=flip_test)
    assert reduced.keys() == reference.keys()
    for key, value in reference.items():
        assert reduced[key].dtype == torch.float32  # decoding always sees float32
        scale = float(value.abs().max()) + 1e-6
        error = float((reduced[key] - value).abs().max())
        assert error <= 0.05 * scale, (key, error, scale)  # bf16 keeps ~3 significant digits per layer
        assert error > 0, key  # it really ran in bfloat16
    result = bf16.predict(image, score_threshold=0.0, flip_test=flip_test)
    assert isinstance(result, Results) and result.segmentation is not None
    assert result.segmentation.shape == (90, 120)


def test_this_machine_runs_bf16_exactly_where_it_is_native() -> None:
    config = dataclasses.replace(ModelConfig.from_yaml(CONFIG), input_size=(64, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        here = Predictor(MultitaskCenterNet(config), config, device="cpu", precision="bf16")
    assert (here.precision.name == "bf16") == cpu_bf16_native()
