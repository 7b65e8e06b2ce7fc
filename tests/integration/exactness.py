"""What the recipe tests of exact resume and process-count invariance share: a callback that kills a run at a
step, the metric keys two runs must agree on, a JSONL reader, and a two-process ``accelerate launch``."""

import json
import os
import subprocess
import sys
from pathlib import Path

from align.trainer import Callback

ROOT = Path(__file__).resolve().parents[2]


class Interrupt(Callback):
    """Stops the run with a KeyboardInterrupt at the end of optimizer step ``at``, after its metrics are taken
    and before they are logged or checkpointed, as a killed job stops."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, trainer, metrics):
        if trainer.state.step == self.at:
            raise KeyboardInterrupt


def stable(rows: list[dict]) -> list[dict]:
    """Metric rows without the wall-clock keys (``time/*``, ``throughput/*``), the only ones that may differ
    between two runs of the same steps."""
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "throughput/"))} for r in rows]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def launch_two(
    script: str | Path, args: list[str], config: str = "accelerate_configs/cpu.yaml"
) -> subprocess.CompletedProcess:
    """``accelerate launch`` of ``script`` (a path under the repository root) with 2 CPU processes (gloo DDP,
    ``accelerate_configs/cpu.yaml``, or another ``config``, e.g. ``cpu_fsdp2.yaml``), one torch thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / config),
        "--main_process_port", "0", str(ROOT / script), *args,
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return res
