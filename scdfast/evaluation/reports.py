"""What every protocol command writes into its run directory, and the merged table.

`results.json` holds one row per (encoder, stream) with top-1/top-5 and the settings used;
`results.md` is the same as a Markdown table; `merge_tables` lays several runs out as the
paper does: one row per protocol, one column per dataset.
"""
from __future__ import annotations

import os

from scdfast.data.synthetic import is_synthetic
from scdfast.errors import ScdError
from scdfast.fileio import read_json
from scdfast.train.rundir import atomic_write, save_json

RESULTS_FILE = "results.json"
# The first line of a table `report --out` writes (an HTML comment: Markdown renders nothing of it),
# by which a later `report --out` knows the file as one it may replace.
REPORT_SIGNATURE = "<!-- written by scdfast report -->\n"
PROTOCOL_NAMES = {"linear": "linear evaluation", "knn": "kNN retrieval", "semi": "semi-supervised",
                  "finetune": "fine-tuning", "transfer": "transfer (linear)"}
PROTOCOL_ORDER = list(PROTOCOL_NAMES)


def dataset_name(data: str) -> str:
    return data if is_synthetic(data) else os.path.basename(os.path.normpath(data))


def protocol_label(report: dict) -> str:
    """'semi-supervised 10%', 'kNN retrieval (k=5)', 'transfer (linear) from nw_ucla', ..."""
    label = PROTOCOL_NAMES[report["protocol"]]
    settings = report.get("settings", {})
    if report["protocol"] == "semi" and isinstance(settings.get("label_fraction"), (int, float)):
        label += f" {settings['label_fraction'] * 100:g}%"
    if settings.get("standardize"):
        label += " (standardized)"
    if report["protocol"] == "knn" and settings.get("k", 1) != 1:
        label += f" (k={settings['k']})"
    if report["protocol"] == "transfer" and report.get("source"):
        label += f" from {dataset_name(report['source'])}"
    return label


def row_label(report: dict, row: dict) -> str:
    label = protocol_label(report)
    if row["stream"] != "joint":
        label += f", {row['stream']}"
    if row["encoder"] != "pretrained":
        label += f", {row['encoder']}"
    return label


def _cell(row: dict) -> str:
    return f"{row['top1']:.1f} / {row['top5']:.1f}"


def run_table(report: dict) -> str:
    lines = [f"# {protocol_label(report)} on {dataset_name(report['data'])}", "",
             f"{report['num_classes']} classes (chance {100.0 / report['num_classes']:.1f}%); "
             f"{report['train_samples']} training samples ({report['labelled_samples']} labels used) and "
             f"{report['test_samples']} test samples.", "",
             "| encoder | stream | top-1 % | top-5 % |", "|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['encoder']} | {row['stream']} | {row['top1']:.2f} | {row['top5']:.2f} |")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str, report: dict) -> None:
    """results.json and results.md, each replaced atomically."""
    save_json(report, os.path.join(run_dir, RESULTS_FILE))
    atomic_write(os.path.join(run_dir, "results.md"), lambda f: f.write(run_table(report)), mode="w")


def read_report(run_dir: str) -> dict:
    path = os.path.join(run_dir, RESULTS_FILE) if os.path.isdir(run_dir) else run_dir
    if not os.path.isfile(path):
        raise ScdError(f"{run_dir}: no {RESULTS_FILE} (not the run directory of a protocol command)")
    report = read_json(path)
    if not isinstance(report, dict):
        raise ScdError(f"{path}: not a protocol command's results (a JSON object)")
    for field in ("protocol", "data", "rows"):
        if field not in report:
            raise ScdError(f"{path}: field {field!r} missing (not written by a protocol command)")
    if report["protocol"] not in PROTOCOL_NAMES or not isinstance(report["data"], str):
        raise ScdError(f"{path}: protocol {report['protocol']!r} is not one a protocol command writes")
    rows = report["rows"]
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("encoder"), str)
                                             and isinstance(r.get("stream"), str)
                                             and all(isinstance(r.get(k), (int, float)) for k in ("top1", "top5"))
                                             for r in rows):
        raise ScdError(f"{path}: field 'rows' is not a list of (encoder, stream, top1, top5) rows")
    if not isinstance(report.get("settings", {}), dict):
        raise ScdError(f"{path}: field 'settings' is not an object")
    return report


def merge_tables(reports: list[dict]) -> str:
    """One Markdown table: rows protocol (and stream, encoder), columns dataset; cells
    'top-1 / top-5'. A later run of the same cell replaces an earlier one."""
    columns: list[str] = []
    cells: dict[tuple[str, str], str] = {}
    order: dict[str, tuple] = {}
    for report in reports:
        column = dataset_name(report["data"])
        if column not in columns:
            columns.append(column)
        for row in report["rows"]:
            label = row_label(report, row)
            cells[(label, column)] = _cell(row)
            order.setdefault(label, (PROTOCOL_ORDER.index(report["protocol"]), row["encoder"] != "pretrained",
                                     row["stream"] == "ensemble", len(order)))
    lines = ["| protocol | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label in sorted(order, key=order.get):
        lines.append(f"| {label} | " + " | ".join(cells.get((label, c), "") for c in columns) + " |")
    return "\n".join(lines) + "\n\ncells: top-1 % / top-5 %\n"
