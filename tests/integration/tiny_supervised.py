"""A tiny supervised problem on the Trainer base, used by the loop's invariance and resume tests.

Run directly (or under ``accelerate launch`` / ``torchrun``) it trains and writes the final parameters
to ``output_dir/params.json``:

    python tests/integration/tiny_supervised.py --output_dir /tmp/a --max_steps 6
    accelerate launch --config_file accelerate_configs/cpu.yaml tests/integration/tiny_supervised.py ...
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from align.config import TrainConfig, check_range, parse_config
from align.trainer import Trainer


@dataclass
class TinyConfig(TrainConfig):
    dataset_size: int = 64
    """Number of (x, y) rows."""
    token_loss: bool = False
    """Use a per-'token' mean loss over a variable number of counted items (tests ``num_items``)."""
    inject_nan_at_step: int = 0
    """Make the loss NaN at this step (tests the non-finite guard); 0 = never."""

    def validate(self) -> None:
        super().validate()
        check_range("dataset_size", self.dataset_size, 1)


class TinyData(Dataset):
    """Linear targets y = x @ w* + noise, with a mask of 1..4 counted 'tokens' per row."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, 4, 3, generator=g)
        w = torch.tensor([[1.0], [-2.0], [0.5]])
        self.y = self.x @ w + 0.1 * torch.randn(n, 4, 1, generator=g)
        lengths = torch.randint(1, 5, (n,), generator=g)
        self.mask = (torch.arange(4)[None, :] < lengths[:, None]).float()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i], "mask": self.mask[i]}


class TinyTrainer(Trainer):
    def __init__(self, config: TinyConfig) -> None:
        self.data = TinyData(config.dataset_size)
        torch.manual_seed(config.seed)
        super().__init__(config, nn.Linear(3, 1))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.config.per_device_train_batch_size, shuffle=True)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        err = (self.model(batch["x"]).squeeze(-1) - batch["y"].squeeze(-1)) ** 2  # (B, 4)
        if self.config.token_loss:
            loss = (err * batch["mask"]).sum() / batch["mask"].sum()
        else:
            loss = err.mean()
        if self.config.inject_nan_at_step and self.state.step + 1 >= self.config.inject_nan_at_step:
            loss = loss * float("nan")
        return loss, {"loss/mse": loss.detach()}

    def num_items(self, batch: dict[str, torch.Tensor]) -> int | None:
        return int(batch["mask"].sum()) if self.config.token_loss else None


def main(args: list[str] | None = None) -> dict[str, list[float]]:
    config = parse_config(TinyConfig, args)
    trainer = TinyTrainer(config)
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model)
    params = {k: v.detach().flatten().tolist() for k, v in model.state_dict().items()}
    if trainer.accelerator.is_main_process:
        Path(config.output_dir, "params.json").write_text(json.dumps(params))
    trainer.save_model(Path(config.output_dir) / "model")
    return params


if __name__ == "__main__":
    main()
