"""benchmarks/gpu_check.py --dry-run on CPU: it exits 0 and its table measures align's HF GRPO, SFT and DPO,
and marks the vLLM parts skipped (or failed) with a reason where vLLM is absent. A tiny model and one step
keep it short; TRL's HF run is left out here (the slowest part to start, and not one the check needs)."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _row(table: str, part: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {part} |"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_gpu_check_dry_run(tmp_path, tiny_model_dir):
    out = tmp_path / "gpu_check.json"
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--steps", "1",
        "--model", str(tiny_model_dir), "--only", "grpo-hf", "grpo-vllm", "trl-vllm", "sft", "dpo",
        "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| part |") :]
    assert "versions: " in proc.stdout and "torch " in proc.stdout

    for part in ("grpo-hf", "sft", "dpo"):
        cells = _row(table, part)
        assert cells[2] == "ok", cells
        assert float(cells[3].replace(",", "")) > 0 and float(cells[4]) > 0  # tokens/s, s/step
        assert float(cells[6]) > 0  # peak RSS (no GPU in a dry run)
    for part in ("grpo-vllm", "trl-vllm"):
        status = _row(table, part)[2]
        if importlib.util.find_spec("vllm") is None:
            assert status == "skipped: vllm not importable"
        else:  # vLLM on CPU may well fail; it must say why on one line
            assert status == "ok" or re.match(r"failed: \S", status), status
    assert "trl-hf" not in table

    report = json.loads(out.read_text())
    assert report["settings"]["dry_run"] is True
    assert report["results"]["grpo-hf"]["tokens_per_sec"] > 0
    assert report["results"]["dpo"]["device"] == "cpu"
