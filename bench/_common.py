"""Helpers the benchmark scripts share: the machine and library versions a result was measured with, and
how fractions are printed.

The scripts run as ``python bench/NAME.py``, which puts ``bench/`` on the import path: they import this
module as ``_common``. The facts come from :mod:`mcn_ros.bag.provenance` (what replay reports record), with
this file's list of packages, no ROS entries and no host name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mcn_ros.bag import provenance

#: Distributions whose versions a benchmark result records.
PACKAGES: tuple[str, ...] = ("torch", "torchvision", "timm", "numpy", "pycocotools", "opencv-python-headless")


def machine() -> dict[str, Any]:
    """Platform, CPU model and its speed-relevant flags, CPU count and how many CPUs this process may use."""
    return {k: v for k, v in provenance.machine().items() if k != "host"}


def git_commit() -> str | None:
    """HEAD's commit, with ``-dirty`` when tracked files differ from it (None outside a git checkout). The
    results folder does not count: ``make bench`` runs its benchmarks one after another in one checkout, and
    an earlier one's new results are not a change to the code that a later one measures."""
    return provenance.git_commit(Path(__file__).resolve().parent.parent, ignore=("bench/results",))


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Python's version and the installed versions of ``packages`` (distribution names)."""
    return provenance.versions(packages, ros=False)


def provenance_opening(record: dict[str, Any]) -> str:
    """The opening of a record's Markdown description: "`command` (date, commit X; cpu flags, " (the
    caller goes on with its own settings)."""
    host = record["machine"]
    return (
        f"`{record['command']}` ({record['date']}, commit {record['git_commit']}; "
        f"{host.get('cpu')} {', '.join(host.get('cpu_flags', []))}, "
    )


def cpu_description(host: dict[str, Any]) -> str:
    """A record's machine as its Markdown names it: "cpu (flags), N CPUs"."""
    return (
        f"{host.get('cpu', '?')} ({', '.join(host.get('cpu_flags', []))}), {host.get('affinity', '?')} CPUs"
    )


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal ("n/a" for None)."""
    return "n/a" if value is None else f"{100 * value:.1f}"


def repo_relative(path: str | Path | None) -> str | None:
    """``path`` relative to the repository when inside it (None and "" give None)."""
    return repo_path(path) if path else None


def repo_path(path: str | Path) -> str:
    """``path`` relative to the repository when inside it, else absolute."""
    root = Path(__file__).resolve().parent.parent
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(resolved)


def read_image(path: str | Path) -> np.ndarray:
    """The image file at ``path`` as OpenCV reads it (BGR); an unreadable file raises, never gives None."""
    image = cv2.imread(str(path))
    if image is None:
        raise RuntimeError(f"could not read the image {path}")
    return np.asarray(image)


def write_record(folder: Path, name: str, record: dict[str, Any], markdown: str) -> None:
    """``folder/<name>.json`` (the record) and ``folder/<name>.md`` (its table); the table is printed too."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (folder / f"{name}.md").write_text(markdown)
    print(markdown)
