"""mcn_ros.typed_config: dataclasses from YAML-shaped mappings, one-line errors naming fields, round trips."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import AfterValidator, Field

from mcn_ros.model.config import ModelConfig
from mcn_ros.typed_config import (
    ConfigError,
    apply_overrides,
    build,
    check_fields,
    deep_merge,
    one_of,
    read_yaml_mapping,
    to_dict,
)
from mcn_training.config import TrainConfig, load_train_config, model_config_dict

REPO = Path(__file__).resolve().parent.parent
TRAIN_CONFIGS = sorted((REPO / "config" / "train").glob("*.yaml"))


class SettingsError(ValueError):
    pass


def _ascending(values: tuple[float, ...]) -> tuple[float, ...]:
    if list(values) != sorted(values):
        raise ValueError(f"must be sorted, got {values!r}")
    return values


@dataclass(frozen=True)
class Inner:
    """No checks of its own in __post_init__ (like a dataclass from another module)."""

    ratio: float = 0.5
    size: tuple[int, int] = (1, 2)

    def __post_init__(self) -> None:
        if self.size[0] > self.size[1]:
            raise ValueError(f"size: expected width <= height, got {self.size!r}")


@dataclass(frozen=True)
class Outer:
    name: Annotated[str, Field(min_length=1)]
    count: Annotated[int, Field(ge=1)] = 1
    mode: Annotated[str, one_of("fast", "slow")] = "fast"
    enabled: bool = True
    steps: Annotated[tuple[Annotated[float, Field(ge=0)], ...], AfterValidator(_ascending)] = ()
    inner: Inner = field(default_factory=Inner)
    optional: Inner | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    def __post_init__(self) -> None:
        check_fields(self, SettingsError)


def test_build_converts_containers_and_round_trips() -> None:
    data = {"name": "a", "steps": [1, 2.5], "inner": {"size": [3, 4]}, "optional": {}, "extra": {"k": [1]}}
    outer = build(Outer, data)
    assert outer == Outer("a", steps=(1.0, 2.5), inner=Inner(size=(3, 4)), optional=Inner(), extra={"k": [1]})
    assert isinstance(outer.steps[0], float) and isinstance(outer.inner.ratio, float)
    plain = to_dict(outer)
    assert plain == {
        "name": "a",
        "count": 1,
        "mode": "fast",
        "enabled": True,
        "steps": [1.0, 2.5],
        "inner": {"ratio": 0.5, "size": [3, 4]},
        "optional": {"ratio": 0.5, "size": [1, 2]},
        "extra": {"k": [1]},
        "path": None,
    }
    assert build(Outer, plain) == outer
    assert build(Outer, outer) is outer  # instances pass unchanged


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "name: missing (required)"),
        ({"name": ""}, "name: must not be empty, got ''"),
        ({"name": None}, "name: must not be null"),
        ({"name": "a", "count": 0}, "count: must be >= 1, got 0"),
        ({"name": "a", "count": True}, "count: expected an integer, got True"),
        ({"name": "a", "count": 2.0}, "count: expected an integer, got 2.0"),
        ({"name": "a", "count": "2"}, "count: expected an integer, got '2'"),
        ({"name": "a", "enabled": 1}, "enabled: expected true or false, got 1"),
        ({"name": "a", "mode": "medium"}, "mode: must be one of fast, slow, got 'medium'"),
        ({"name": "a", "steps": [2, 1]}, "steps: must be sorted, got (2.0, 1.0)"),
        ({"name": "a", "steps": [1, -1]}, "steps[1]: must be >= 0, got -1"),
        ({"name": "a", "steps": 3}, "steps: expected a list, got 3"),
        ({"name": "a", "inner": {"ratio": "0.5"}}, "inner.ratio: expected a finite number, got '0.5'"),
        ({"name": "a", "inner": {"ratio": float("nan")}}, "inner.ratio: expected a finite number, got nan"),
        ({"name": "a", "inner": {"size": [1]}}, "inner.size: expected 2 values, got [1]"),
        (
            {"name": "a", "inner": {"size": [1, 2, 3]}},
            "inner.size: too many values (at most 2)",
        ),
        ({"name": "a", "inner": {"size": [4, 3]}}, "inner.size: expected width <= height, got (4, 3)"),
        ({"name": "a", "inner": {"bogus": 1}}, "inner.bogus: unknown field (allowed: ratio, size)"),
        ({"name": "a", "optional": {"bogus": 1}}, "optional.bogus: unknown field (allowed: ratio, size)"),
        ({"name": "a", "inner": None}, "inner: must not be null"),
        ({"name": "a", "inner": [1]}, "inner: expected a mapping, got [1]"),
        ({"name": "a", "extra": 3}, "extra: expected a mapping, got 3"),
        ({"name": "a", "path": 3}, "path: expected a string, got 3"),
        (
            {"name": "a", "bogus": 1},
            "bogus: unknown field (allowed: name, count, mode, enabled, steps, ",
        ),
        ([1], "expected a mapping, got [1]"),
    ],
)
def test_build_errors_are_one_line_naming_the_field(data: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}") as info:
        build(Outer, data)
    assert "\n" not in str(info.value)


def test_build_where_and_error_class() -> None:
    with pytest.raises(SettingsError, match=r"^settings\.inner\.ratio: expected a finite number, got True$"):
        build(Outer, {"name": "a", "inner": {"ratio": True}}, where="settings", error=SettingsError)
    with pytest.raises(SettingsError, match=r"^settings: expected a mapping, got 3$"):
        build(Outer, 3, where="settings", error=SettingsError)


def test_check_fields_applies_to_instances_made_in_code() -> None:
    with pytest.raises(SettingsError, match=r"^count: must be >= 1, got 0$"):
        Outer("a", count=0)
    outer = Outer("a", steps=[0, 1])  # type: ignore[arg-type]
    assert outer.steps == (0.0, 1.0)
    with pytest.raises(SettingsError, match=r"^steps: must be sorted, got \(1\.0, 0\.0\)$"):
        dataclasses.replace(outer, steps=(1.0, 0.0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        outer.count = 2  # type: ignore[misc]


def test_apply_overrides_and_deep_merge() -> None:
    data = {"a": {"b": 1, "c": [1, 2]}, "d": None}
    result = apply_overrides(data, ["a.b=2.5", "d.e=[1, 2]", "f=null", "a.c=text"])
    assert result == {"a": {"b": 2.5, "c": "text"}, "d": {"e": [1, 2]}, "f": None}
    assert data == {"a": {"b": 1, "c": [1, 2]}, "d": None}  # not modified
    with pytest.raises(SettingsError, match=r"^override 'a\.b\.x=1': a\.b is not a section$"):
        apply_overrides(data, ["a.b.x=1"], SettingsError)
    with pytest.raises(ConfigError, match=r"^override 'a': expected key=value"):
        apply_overrides(data, ["a"])
    with pytest.raises(ConfigError, match=r"^override 'a=\[': invalid YAML value"):
        apply_overrides(data, ["a=["])
    merged = deep_merge(data, {"a": {"c": 3}, "g": {"h": 1}})
    assert merged == {"a": {"b": 1, "c": 3}, "d": None, "g": {"h": 1}}
    assert data["a"] == {"b": 1, "c": [1, 2]}


def test_read_yaml_mapping_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("- 1\n")
    with pytest.raises(SettingsError, match=r"settings .*s\.yaml: expected a mapping at the top level"):
        read_yaml_mapping(path, "settings", SettingsError)
    path.write_text("a: [1\n")
    with pytest.raises(ConfigError, match=r"settings .*s\.yaml: invalid YAML"):
        read_yaml_mapping(path, "settings")
    with pytest.raises(ConfigError, match=r"cannot read settings .*missing\.yaml"):
        read_yaml_mapping(tmp_path / "missing.yaml", "settings")


def test_a_binary_file_is_named_not_decoded() -> None:
    """A weights file given where a config belongs (--config last.safetensors for --resume): one line."""
    weights = REPO / "demo" / "mcn_demo.safetensors"
    message = r"^settings .*mcn_demo\.safetensors: not a YAML text file"
    with pytest.raises(SettingsError, match=message) as info:
        read_yaml_mapping(weights, "settings", SettingsError)
    assert "\n" not in str(info.value)


def test_numbers_in_scientific_notation_are_floats_as_in_yaml_1_2(tmp_path: Path) -> None:
    """PyYAML (YAML 1.1) reads 1e-3 as a string: files and overrides read it as YAML 1.2 does, a float. A
    quoted one stays a string (refused by a float field), an integer field still takes no float, and a
    number too large for a float is refused as not finite."""
    path = tmp_path / "s.yaml"
    path.write_text("a: 5e-4\nb: 1E3\nc: -2.5e+2\nd: '1e-3'\ne: 1.0e-3\nf: 1e-3x\n")
    assert read_yaml_mapping(path, "settings") == {
        "a": 5e-4, "b": 1000.0, "c": -250.0, "d": "1e-3", "e": 1e-3, "f": "1e-3x"
    }  # fmt: skip
    assert apply_overrides({}, ["inner.ratio=1e-3"]) == {"inner": {"ratio": 1e-3}}
    assert build(Outer, apply_overrides({"name": "a"}, ["inner.ratio=1e-3"])).inner.ratio == 1e-3
    cases = [
        ("inner.ratio='1e-3'", "inner.ratio: expected a finite number, got '1e-3'"),
        ("inner.ratio=1e999", "inner.ratio: expected a finite number, got inf"),
        ("count=1e3", "count: expected an integer, got 1000.0"),
    ]
    for override, message in cases:
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            build(Outer, apply_overrides({"name": "a"}, [override]))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.stem)
def test_shipped_train_configs_load_and_round_trip(path: Path) -> None:
    config = load_train_config(path)
    assert TrainConfig.from_dict(config.to_dict()) == config
    model = ModelConfig.from_dict(model_config_dict(config))
    assert ModelConfig.from_dict(model.to_dict()) == model
