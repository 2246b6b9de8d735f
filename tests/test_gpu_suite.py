"""benchmarks/gpu_suite.py --dry-run: the prepared GPU run, end to end on the CPU at tiny sizes."""
import json
import os
import subprocess
import sys

from conftest import SHARED_DATA

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dry_run_writes_every_part(tmp_path):
    ucla = SHARED_DATA / "nw_ucla" / "all_sqe"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "gpu_suite.py"), "--out", str(tmp_path), "--dry-run",
               "--budget-minutes", "8"]
    if ucla.is_dir():
        command += ["--ucla-raw", str(ucla)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    parts = results["parts"]
    assert list(parts) == ["environment", "gpu_tests", "loss", "augment", "pretrain", "ucla"]
    assert all(p["status"] == "ok" for name, p in parts.items() if name != "ucla"), parts
    assert parts["ucla"]["status"] == ("ok" if ucla.is_dir() else "skipped")
    rows = parts["loss"]["rows"]
    ours = {(c, p) for c in ("moco", "scd", "ntxent", "clip") for p in ("eager", "compiled", "fused")}
    peers = {("ntxent", "lightly"), ("ntxent", "pml"), ("clip", "open_clip")}
    assert {(r["case"], r["provider"]) for r in rows} == ours | peers
    assert all(r["both_ms"] > 0 for r in rows if (r["case"], r["provider"]) in ours)
    assert all(r.get("both_ms", 0) > 0 or "not importable" in r["error"] for r in rows), "a peer runs or says why"
    assert parts["augment"]["views_per_s"] > 0
    assert {r["batch"] for r in parts["pretrain"]["rows"]} == {8, 16}
    markdown = (tmp_path / "results.md").read_text()
    assert "## Loss" in markdown and "## Pretraining" in markdown
