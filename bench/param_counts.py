"""Count trainable parameters of every shipped model config and compare DLA-34 with the paper's Table 4.

    HF_HUB_OFFLINE=1 python bench/param_counts.py [--out bench/results]

Writes ``param_counts.json`` (command, machine, versions, git commit, counts per config and per part) and
``param_counts.md`` (tables and the comparison with Table 4). Models are built with random weights on the
CPU; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from _common import git_commit, machine, versions

from mcn_ros.model.config import ModelConfig
from mcn_ros.model.heads import count_parameters
from mcn_ros.model.mcn import MultitaskCenterNet

ROOT = Path(__file__).resolve().parents[1]
#: Table 4 of the paper (DLA-34, 512x512 segmentation output), trainable parameters in millions, and the
#: shipped config each row is compared with (the table does not say single- or multi-class; see notes).
TABLE4: dict[str, tuple[float, list[str]]] = {
    "Only Seg": (20.37, ["dla34_seg80_512"]),
    "Only Det": (20.40, ["dla34_det80_512"]),
    "Det + Pose": (20.44, ["dla34_det1_pose_512"]),
    "Seg + Det": (20.40, ["dla34_det80_seg80_512"]),
    "Seg + Det + Pose": (20.52, ["dla34_det80_seg80_pose_512"]),
    "Only Seg & Only Det (STN)": (40.77, ["dla34_seg80_512", "dla34_det80_512"]),
    "Only Seg & Only Det & Only Pose (STN)": (
        60.81,
        ["dla34_seg80_512", "dla34_det80_512", "dla34_det1_pose_512"],
    ),
}
#: CenterNet's DLA-34 keeps the ImageNet classifier (``base.fc``, 512 -> 1000 1x1 conv) in the model after
#: loading the pretrained backbone although it is never used; parameter counts of CenterNet models include it.
CENTERNET_DLA_FC = 512 * 1000 + 1000
TOLERANCE = 0.05


def count(config: ModelConfig) -> dict[str, Any]:
    """Parameter counts of one config, in total and per part."""
    model = MultitaskCenterNet(config)
    return {
        "name": config.name,
        "backbone": config.backbone,
        "use_dcn": config.use_dcn,
        "tasks": sorted(config.tasks),
        "total": count_parameters(model),
        "backbone_params": count_parameters(model.backbone),
        "neck": count_parameters(model.neck),
        "heads": {name: count_parameters(head) for name, head in model.heads.items()},
    }


def compare(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Table 4 against our counts, with and without CenterNet's unused classifier."""
    result = []
    for label, (paper, names) in TABLE4.items():
        if not all(n in rows for n in names):
            continue
        ours = sum(rows[n]["total"] for n in names)
        centernet = ours + CENTERNET_DLA_FC * len(names)
        result.append(
            {
                "row": label,
                "configs": names,
                "paper_M": paper,
                "ours_M": round(ours / 1e6, 3),
                "ours_rel_diff": round(ours / 1e6 / paper - 1, 4),
                "with_centernet_fc_M": round(centernet / 1e6, 3),
                "with_centernet_fc_rel_diff": round(centernet / 1e6 / paper - 1, 4),
            }
        )
    return result


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables plus the explanation of the differences."""
    lines = [
        "# Parameter counts of the shipped model configs",
        "",
        f"Command: `{report['command']}` ({report['date']}, torch {report['versions']['torch']}, "
        f"timm {report['versions']['timm']}). Trainable parameters; random init, no download.",
        "",
        "| config | backbone | DCN | tasks | total (M) | backbone (M) | up-path (M) | heads (M) |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for row in report["configs"]:
        heads = ", ".join(f"{k} {v / 1e6:.3f}" for k, v in row["heads"].items())
        lines.append(
            f"| {row['name']} | {row['backbone']} | {'yes' if row['use_dcn'] else 'no'} | "
            f"{'+'.join(row['tasks'])} | {row['total'] / 1e6:.3f} | {row['backbone_params'] / 1e6:.3f} | "
            f"{row['neck'] / 1e6:.3f} | {heads} |"
        )
    lines += [
        "",
        "## DLA-34 against the paper's Table 4",
        "",
        "| Table 4 row | our config(s) | paper (M) | ours (M) | diff | + unused fc (M) | diff |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["table4"]:
        lines.append(
            f"| {row['row']} | {' + '.join(row['configs'])} | {row['paper_M']:.2f} | {row['ours_M']:.3f} | "
            f"{100 * row['ours_rel_diff']:+.1f}% | {row['with_centernet_fc_M']:.3f} | "
            f"{100 * row['with_centernet_fc_rel_diff']:+.1f}% |"
        )
    worst = max(abs(r["ours_rel_diff"]) for r in report["table4"]) if report["table4"] else 0.0
    lines += ["", f"Largest difference without the classifier: {100 * worst:.1f}% (tolerance 5%).", ""]
    lines += EXPLANATION
    return "\n".join(lines) + "\n"


EXPLANATION = [
    "## Why the counts differ from Table 4",
    "",
    "- **CenterNet keeps an unused classifier.** CenterNet's DLA-34 (`pose_dla_dcn.py`, which the paper",
    "  builds on) creates `base.fc`, a 512 -> 1000 1x1 conv, when it loads the ImageNet backbone, and keeps",
    "  it in the model although `forward` never uses it: 513,000 parameters counted as trainable. Our",
    "  backbone is timm's `features_only` DLA-34 without the classifier (15.229 M instead of 15.742 M).",
    "  Adding it back brings *Only Det* from 19.63 M to 20.15 M (-1.2% from 20.40 M).",
    "- **The paper's rows are not consistent with one another.** With CenterNet's heads (head_conv 256),",
    "  each head branch has about 0.15 M parameters: detection has three branches (0.465 M for 80",
    "  classes), pose three (0.457 M), segmentation one (0.169 M). Table 4 lists *Seg + Det* with the same",
    "  count as *Only Det* (20.40 M) and *Det + Pose* only 0.04 M above *Only Det*, which no head layout",
    "  with 256-channel branches can give; the rows look rounded from differently configured runs",
    "  (single- vs multi-class heads are not stated). The shared part (backbone + DLA-up/IDA-up with",
    "  DCNv2 = 19.17 M here, 19.68 M with the classifier) is what dominates every row, and it matches.",
    "- **Only Seg is the one row beyond 5%** (-5.1%). The classifier accounts for 2.5 points (-2.5% with",
    "  it). The rest comes from the table itself: it puts *Only Seg* just 0.03 M below *Only Det*, while a",
    "  one-branch segmentation head is 0.30 M smaller than the three detection branches. The paper does",
    "  not describe its segmentation head beyond FCN-style upsampling to the map size; ours is CenterNet's",
    "  branch (conv3x3 256 + ReLU + conv1x1 to 81 classes) with parameter-free bilinear upsampling.",
    "- Everything else follows CenterNet exactly: DLA-up + IDA-up with DCNv2 (a 3x3 offset/mask conv per",
    "  deformable conv), depthwise transposed convs, heads conv3x3(256) + ReLU + conv1x1.",
]


def main(argv: list[str] | None = None) -> int:
    """Count, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=str(ROOT / "config" / "models"), help="folder of model YAMLs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output folder")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = {}
    for path in sorted(Path(args.configs).glob("*.yaml")):
        config = ModelConfig.from_yaml(path)
        rows[config.name] = count(config)
        print(f"{config.name:34s} {rows[config.name]['total'] / 1e6:8.3f} M")
    report: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", *argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "git_commit": git_commit(),
        "configs": list(rows.values()),
        "table4": compare(rows),
        "centernet_dla_fc_params": CENTERNET_DLA_FC,
    }
    for row in report["table4"]:
        print(f"Table 4 {row['row']:40s} paper {row['paper_M']:6.2f} M  ours {row['ours_M']:7.3f} M "
              f"({100 * row['ours_rel_diff']:+.1f}%)")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "param_counts.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "param_counts.md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
