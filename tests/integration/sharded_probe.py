"""Launched by tests/integration/test_sharded.py under accelerate_configs/cpu_fsdp2.yaml: prints what the Trainer
made of the config (distributed type, whether the parameters are sharded DTensors, the reference's type)."""

import sys

from align.config import TrainConfig
from align.models import make_reference
from align.trainer import Trainer
from tests.support import tiny_causal_lm

trainer = Trainer(TrainConfig(output_dir=sys.argv[1], disable_progress_bar=True), tiny_causal_lm())
params = list(trainer.model.parameters())
sharded = all(type(p).__name__ == "DTensor" for p in params)
ref = make_reference(trainer.model)
if trainer.accelerator.is_main_process:
    print(f"PROBE {trainer.accelerator.distributed_type.value} sharded={sharded} ref={type(ref).__name__}")
