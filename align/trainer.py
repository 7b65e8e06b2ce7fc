"""The Trainer base: the loop and everything that is not the algorithm.

The loop does one thing: **an optimizer step over a list of weighted micro-batches** (an
:class:`UpdateStep`). An algorithm supplies:

* ``plan_updates() -> list[UpdateStep]``: it gathers experience (dataset batches by default; a rollout
  for GRPO, PPO-RLHF and the policy-gradient agents; environment steps into a replay buffer for DQN) and
  returns the optimizer steps to take on it. GRPO's num_epochs (mu), PPO's epochs x minibatches and
  DQN's gradient steps are plans, not loops of their own. The base queues the steps and takes one per
  trainer step, so ``max_steps``, ``save_steps``, ``eval_steps``, ``logging_steps`` and the LR schedule
  count optimizer steps in every trainer; rollouts, environment steps and episodes are ``counters``,
  logged on every line.
* ``compute_loss(micro_batch) -> (loss, metrics)``: the micro-batch's *mean* loss, built from
  ``align.losses`` / ``align.advantages``.

A micro-batch's weight is the number of items its mean runs over (tokens, sequences, transitions). The
base divides every weight by the step's total over all processes, so the update is the mean over the
whole step whatever the accumulation and the process count; zero-weight micro-batches pad a process that
holds fewer, so DDP ranks stay in step and the update does not change. Metrics are averaged with the same
weights.

The base owns: accelerate (device, mixed precision, DDP / DeepSpeed / FSDP via ``accelerator.prepare``),
AdamW with a transformers schedule, accumulation, clipping, a non-finite guard agreed across processes,
logging (``metrics.jsonl`` plus accelerate trackers), a progress bar, periodic evaluation with an
optional best-model copy, the run directory (one guard before anything is written, atomic checkpoints
that load without unpickling, every log cut back to the checkpoint on resume) and callbacks.

We do not subclass ``transformers.Trainer``: its control flow is hidden and fits neither rollouts nor
environments. The loop below is deliberately short enough to read top to bottom.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, GradientAccumulationPlugin, set_seed
from torch import nn

from align import checkpoint as ckpt
from align.config import ConfigError, TrainConfig, config_to_dict, save_config
from align.monitors import Monitors

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
MANIFEST_FILE = "run_files.json"
#: Files and folders align writes into an output_dir; any of them marks a previous run. A run also lists
#: everything it wrote in MANIFEST_FILE, so --overwrite_output_dir removes exactly that.
RUN_MARKERS = (METRICS_FILE, CONFIG_FILE, CHECKPOINT_DIR, MODEL_DIR, COMPLETIONS_FILE, MANIFEST_FILE)
#: Logs with one JSON object per line and a "step" key: cut back to the checkpoint's step on resume.
STEP_LOGS = (METRICS_FILE, COMPLETIONS_FILE)


class NonFiniteError(RuntimeError):
    """Raised when too many optimizer steps in a row had a non-finite loss or gradient."""


class Callback:
    """Hooks into the loop. Override any subset; every hook receives the trainer."""

    def on_train_begin(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_log(self, trainer: Trainer, logs: dict[str, float]) -> None: ...
    def on_evaluate(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...
    def on_save(self, trainer: Trainer, path: Path) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


@dataclass
class UpdateStep:
    """One optimizer step: ``(micro_batch, weight)`` pairs, at most ``gradient_accumulation_steps`` of them.

    ``weight`` is the number of items the micro-batch's mean loss runs over (0 for padding); the update
    is ``sum_i weight_i * loss_i / total``. ``total`` defaults to the sum of the weights over every
    process; give it when items left out of the micro-batches still count in the mean (GRPO's dropped
    zero-advantage groups). ``metrics`` are the step's own (a rollout's reward, say), logged as they are.
    """

    micro_batches: list[tuple[Any, float]]
    metrics: dict[str, float] = field(default_factory=dict)
    total: float | None = None


@dataclass
class TrainerState:
    """Everything about the loop's position that a checkpoint must restore for an exact resume."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    consecutive_nonfinite: int = 0
    total_nonfinite: int = 0
    best_metric: float | None = None
    best_step: int = 0
    counters: dict[str, float] = field(default_factory=dict)
    # Running sums for the current logging window: key -> [sum, count].
    log_window: dict[str, list[float]] = field(default_factory=dict)
    # The monitors' state (align.monitors), plain JSON, as of the last logged row.
    monitors: dict[str, Any] = field(default_factory=dict)


def _to_float(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean().item()) if v.numel() else float("nan")
    return float(v)


class Trainer:
    """Base class of every align trainer; the module docstring says what a subclass supplies. ``model``
    is ``None`` for a trainer with nothing to optimise by gradient (it overrides ``training_step``);
    ``evaluator(trainer) -> metrics`` is the in-training evaluation, built by ``align.eval``, so trainers
    never import the evaluations."""

    #: Metric keys shown on the progress bar when present.
    progress_keys: tuple[str, ...] = ("loss", "reward/mean", "episode/return")
    #: Dataclasses a pending update step may hold, rebuilt on resume (checkpoints never import by name).
    plan_types: tuple[type, ...] = ()

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module | None = None,
        *,
        tokenizer: Any = None,
        callbacks: list[Callback] | None = None,
        evaluator: Callable[[Trainer], dict[str, float]] | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.callbacks = list(callbacks or [])
        self.evaluator = evaluator
        self.state = TrainerState()
        self.output_dir = Path(config.output_dir)
        self.accelerator = self._make_accelerator(config)
        set_seed(config.seed)
        check_output_dir(
            self.output_dir,
            resume=bool(config.resume_from_checkpoint),
            overwrite=config.overwrite_output_dir,
            accelerator=self.accelerator,
        )
        # What the directory held before this run (the user's files): everything else that appears in it
        # is the run's, recorded in the manifest so that --overwrite_output_dir removes exactly that.
        self._preexisting = {p.name for p in self.output_dir.iterdir()} - set(run_files(self.output_dir))

        self.model = model
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_scheduler: Any = None
        if model is not None:
            self.optimizer = self.create_optimizer(model)
        if self.optimizer is not None:
            self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
            # On the torch optimizer: its step() is what the schedule sees (see _plain_optimizer).
            self.lr_scheduler = self.create_scheduler(getattr(self.optimizer, "optimizer", self.optimizer))
        elif model is not None:
            self.model = self.accelerator.prepare(model)

        self._dataloader = self.train_dataloader()
        if self._dataloader is not None:
            self._dataloader = self.accelerator.prepare(self._dataloader)
        self._data_iter: Any = None
        self._pending: deque[UpdateStep] = deque()
        self._best_state: dict[str, torch.Tensor] | None = None
        self._metric_weights: dict[str, float] = {}
        self._pbar: Any = None
        # Fed every logged row in log(); identical on every process (the row is), warning on the main one.
        self.monitors = Monitors.from_config(config, verbose=self.accelerator.is_main_process)

    def _make_accelerator(self, config: TrainConfig) -> Accelerator:
        mixed = config.mixed_precision
        if mixed == "auto":
            mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        cpu = not (torch.cuda.is_available() or _has_other_accelerator())
        if cpu and _env_flag("ACCELERATE_USE_DEEPSPEED"):
            # accelerate 1.16 on a machine without GPUs: with cpu=True it drops the DeepSpeed config and runs
            # DDP; with cpu=False DeepSpeed starts gloo but accelerate sees num_processes=1 on every rank.
            raise ConfigError(
                "DeepSpeed through accelerate needs a GPU (accelerate 1.16 runs no DeepSpeed on CPU); for "
                "sharded training on CPU use accelerate_configs/cpu_fsdp2.yaml (FSDP2 over gloo)"
            )
        acc = Accelerator(
            # Without a GPU, accelerate only takes the multi-process CPU path (gloo) when told cpu=True;
            # otherwise `accelerate launch`/torchrun start N processes that each train alone.
            cpu=cpu,
            mixed_precision=mixed,
            # Every UpdateStep is padded to this many micro-batches, so accelerate's (and DeepSpeed's)
            # accumulation boundary is the step's last micro-batch.
            gradient_accumulation_plugin=GradientAccumulationPlugin(
                num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False
            ),
            # The seedable sampler makes the data order a function of (seed, epoch): needed for resume.
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
            # We step the scheduler once per optimizer step ourselves; accelerate would step it once per
            # process, which makes a 2-process run's schedule differ from a 1-process run's.
            step_scheduler_with_optimizer=False,
            log_with=config.report_to or None,
            project_dir=str(self.output_dir),
        )
        if acc.distributed_type == DistributedType.MULTI_CPU and _env_flag("ACCELERATE_USE_FSDP"):
            _fsdp_on_cpu(mixed)
        return acc

    # --- Hooks for subclasses.

    def train_dataloader(self) -> torch.utils.data.DataLoader | None:
        """The training data, or ``None`` when experience comes from rollouts or environments."""
        return None

    def next_batch(self) -> Any:
        """The next batch of ``train_dataloader()``, cycling epochs (the position is checkpointed)."""
        if self._dataloader is None:
            raise TypeError(f"{type(self).__name__} has no train_dataloader(); override plan_updates()")
        while True:
            if self._data_iter is None:
                self._start_epoch(skip=self.state.batch_in_epoch)
            try:
                batch = next(self._data_iter)
            except StopIteration:
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                self._data_iter = None
                continue
            self.state.batch_in_epoch += 1
            return batch

    def plan_updates(self) -> list[UpdateStep]:
        """Gather experience and return the optimizer steps to take on it.

        Default (dataset trainers): one step over the next ``gradient_accumulation_steps`` batches, each
        weighted by ``num_items``.
        """
        batches = [self.next_batch() for _ in range(self.config.gradient_accumulation_steps)]
        return [UpdateStep([(b, float(self.num_items(b) or 1)) for b in batches])]

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        """Turn one micro-batch into its mean loss (over ``num_items`` items) and detached metrics."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss(batch)")

    def num_items(self, batch: Any) -> int | None:
        """How many items (e.g. counted tokens) the micro-batch's mean loss averages over; ``None`` = 1."""
        return None

    def skip_update(self, metrics: dict[str, Any]) -> bool:
        """Called after the step's backward passes with their metrics: True skips the optimizer step
        (PPO's target-KL stop). Default: never."""
        return False

    def create_optimizer(self, model: nn.Module) -> torch.optim.Optimizer | None:
        """AdamW over the trainable parameters (no weight decay on biases and norms)."""
        cfg = self.config
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        if not decay and not no_decay:
            return None
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            eps=cfg.adam_epsilon,
            fused=self._can_fuse(decay + no_decay),
        )

    def _can_fuse(self, params: list[nn.Parameter]) -> bool:
        """Whether torch's fused AdamW kernel applies: floating parameters on CPU or CUDA, not sharded
        (DeepSpeed and FSDP bring their own optimizer handling). Same arithmetic, one pass over the
        parameters instead of a loop with temporaries."""
        fusable = (torch.float32, torch.bfloat16, torch.float16)
        return self._plain_ddp() and all(
            p.device.type in ("cpu", "cuda") and p.dtype in fusable for p in params
        )

    def _plain_ddp(self) -> bool:
        """One process or plain DDP (CPU or GPU): no sharding engine (DeepSpeed, FSDP) that gathers weights."""
        return self.accelerator.distributed_type in (
            DistributedType.NO,
            DistributedType.MULTI_GPU,
            DistributedType.MULTI_CPU,
        )

    def create_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """A transformers schedule with linear warm-up (``lr_scheduler_type``, ``warmup_*``)."""
        from transformers import get_scheduler

        cfg = self.config
        warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * cfg.max_steps)
        return get_scheduler(
            cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=cfg.max_steps
        )

    def on_step_end(self, metrics: dict[str, float]) -> None:
        """Called after each optimizer step (e.g. to sync a target network)."""

    def evaluate(self) -> dict[str, float]:
        """Evaluation (every ``eval_steps`` and on demand): the ``evaluator`` given to the trainer, called
        with the trainer, returning metrics with keys like ``eval/<task>/accuracy``. Trainers whose
        evaluation is part of the algorithm (RL returns, held-out losses) override it."""
        return dict(self.evaluator(self)) if self.evaluator is not None else {}

    def extra_state_dict(self) -> dict[str, Any]:
        """Subclass state a checkpoint must hold (replay buffer, KL coefficient, env RNG, ...): tensors,
        numpy arrays, numbers, strings, lists and dicts."""
        return {}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state_dict`` returned."""

    def save_model(self, path: str | Path) -> Path:
        """Save the final model (and tokenizer): ``save_pretrained`` when the model has it, else safetensors."""
        path = Path(path)
        self.accelerator.wait_for_everyone()
        if self.model is None:
            return path
        unwrapped = self.accelerator.unwrap_model(self.model)
        # Under FSDP a collective: every process gathers, the main one gets the full tensors.
        state_dict = self.accelerator.get_state_dict(self.model)
        if self.accelerator.distributed_type == DistributedType.FSDP and state_dict:
            # FSDP's full state dict holds tied weights (tied embeddings) as separate tensors, so
            # save_pretrained would write both: keep the first name of each tied parameter, as DDP's save does.
            seen: set[int] = set()
            for name, param in unwrapped.named_parameters(remove_duplicate=False):
                if id(param) in seen:
                    state_dict.pop(name, None)
                seen.add(id(param))
        if self.accelerator.is_main_process:
            path.mkdir(parents=True, exist_ok=True)
            if hasattr(unwrapped, "save_pretrained"):
                unwrapped.save_pretrained(path, state_dict=state_dict, safe_serialization=True)
            else:
                from safetensors.torch import save_file

                # clone(): safetensors refuses tensors that share storage (tied weights).
                save_file(
                    {k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()},
                    path / "model.safetensors",
                )
            if self.tokenizer is not None and hasattr(self.tokenizer, "save_pretrained"):
                self.tokenizer.save_pretrained(path)
        self.accelerator.wait_for_everyone()
        return path

    # --- One optimizer step.

    def training_step(self) -> dict[str, float]:
        """Take the next planned optimizer step, planning more when none is left."""
        if not self._pending:
            self._pending.extend(self.plan_updates())
            if not self._pending:
                raise RuntimeError(f"{type(self).__name__}.plan_updates() returned no update step")
        return self.optimizer_step(self._pending.popleft())

    def optimizer_step(self, step: UpdateStep) -> dict[str, float]:
        """Backpropagate the step's weighted micro-batches, clip, and step (see the module docstring).

        A non-finite loss or gradient on any process skips the update on all (counted in
        ``train/nonfinite_steps``); so does ``skip_update``.
        """
        acc, n_acc = self.accelerator, self.config.gradient_accumulation_steps
        assert self.model is not None and self.optimizer is not None
        micro = list(step.micro_batches)
        if not micro or len(micro) > n_acc:
            raise ValueError(
                f"an update step must hold 1 to gradient_accumulation_steps={n_acc} micro-batches, got {len(micro)}"
            )
        # With several processes (or DeepSpeed, which counts backward calls), every step has exactly n_acc
        # micro-batches, padded with zero weight: the accumulation boundary and DDP's all-reduce then fall
        # on the same micro-batch everywhere. One plain process needs neither the padding nor the context.
        plain = acc.num_processes == 1 and acc.distributed_type != DistributedType.DEEPSPEED
        if not plain:
            micro += [(micro[-1][0], 0.0)] * (n_acc - len(micro))
        total = step.total if step.total is not None else self._global_sum(sum(w for _, w in micro))
        self.model.train()
        sums: dict[str, list[float]] = {}
        finite = True
        for batch, w in micro:
            with contextlib.nullcontext() if plain else acc.accumulate(self.model):
                loss, metrics = self.compute_loss(batch)
                finite &= bool(torch.isfinite(loss.detach()).all())
                share = w / total if total > 0 else 0.0
                # accelerate divides by n_acc and DDP averages over processes; undo both for a weighted sum.
                acc.backward(loss * (share * n_acc * acc.num_processes))
                for k, v in {"loss": loss, **metrics}.items():
                    s = sums.setdefault(k, [0.0, 0.0])
                    s[0] += _to_float(v) * w
                    s[1] += w
        out = {k: (s[0] / s[1] if s[1] > 0 else float("nan")) for k, s in sums.items()}
        self._metric_weights = {k: s[1] for k, s in sums.items() if s[1] > 0}
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        grad_norm = float(grad_norm) if grad_norm is not None else float("nan")
        skip = self.skip_update(out)
        # Every process must agree, or DDP's next all-reduce would hang.
        finite_all, skip_any = self._agree(finite and math.isfinite(grad_norm), skip)
        opt = self._plain_optimizer()
        if finite_all and not skip_any:
            opt.step()
            self.state.consecutive_nonfinite = 0
        elif not finite_all:
            self.state.consecutive_nonfinite += 1
            self.state.total_nonfinite += 1
        opt.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        out = {k: v for k, v in out.items() if not math.isnan(v)}
        out.update(step.metrics)
        out["grad_norm"] = grad_norm
        out["lr"] = self.lr_scheduler.get_last_lr()[0]
        out["train/skipped_update"] = float(skip_any)
        return out

    def _global_sum(self, local: float) -> float:
        acc = self.accelerator
        if acc.num_processes == 1:
            return float(local)
        return float(acc.reduce(torch.tensor(float(local), device=acc.device), "sum").item())

    def _agree(self, ok: bool, skip: bool) -> tuple[bool, bool]:
        acc = self.accelerator
        if acc.num_processes == 1:
            return ok, skip
        flags = acc.reduce(torch.tensor([float(not ok), float(skip)], device=acc.device), "sum")
        return bool(flags[0] == 0), bool(flags[1] > 0)

    def _plain_optimizer(self) -> Any:
        """The torch optimizer inside accelerate's wrapper when the wrapper would only forward the call (no
        fp16 grad scaler, no XLA / DeepSpeed): its step() and zero_grad() cost ~240 us of package look-ups
        per call, 40% of DQN's time on tiny networks. The LR schedule is built on the torch optimizer, so
        it sees the step either way."""
        from accelerate.optimizer import AcceleratedOptimizer

        opt = self.optimizer
        if (
            isinstance(opt, AcceleratedOptimizer)
            and opt.scaler is None
            and self.accelerator.distributed_type not in (DistributedType.XLA, DistributedType.DEEPSPEED)
        ):
            return opt.optimizer
        return opt

    # --- The loop.

    def train(self) -> dict[str, float]:
        """Run until ``max_steps``; return the last logged metrics."""
        cfg = self.config
        acc = self.accelerator
        if acc.distributed_type == DistributedType.FSDP and (cfg.save_steps or cfg.resume_from_checkpoint):
            # Checkpoints save the main process's module and optimizer as they are: under FSDP those hold only
            # its shards. The final model (save_model) is gathered and complete.
            raise ckpt.CheckpointError(
                "save_steps / resume_from_checkpoint are not supported under FSDP yet (a checkpoint would hold "
                "one process's shards); set save_steps 0, the final model is saved whole"
            )
        if cfg.resume_from_checkpoint:
            self.resume(cfg.resume_from_checkpoint)
        if acc.is_main_process:
            save_config(cfg, self.output_dir / CONFIG_FILE)
            record_run_files(self.output_dir, CONFIG_FILE, METRICS_FILE, CHECKPOINT_DIR)
        if cfg.report_to:
            acc.init_trackers(cfg.run_name or self.output_dir.name, config=_flat_config(cfg))
        for cb in self.callbacks:
            cb.on_train_begin(self)
        self._open_progress()
        last_logs: dict[str, float] = {}
        while self.state.step < cfg.max_steps:
            last_logs = self._one_step() or last_logs
        if self._pbar is not None:
            self._pbar.close()
        self.record_outputs()
        for cb in self.callbacks:
            cb.on_train_end(self)
        if cfg.report_to:
            acc.end_training()
        return last_logs

    def _one_step(self) -> dict[str, float] | None:
        cfg = self.config
        t0 = time.perf_counter()
        self._metric_weights = {}
        metrics = self.training_step()
        self.state.step += 1
        metrics["time/step_seconds"] = time.perf_counter() - t0
        metrics["train/nonfinite_steps"] = float(self.state.total_nonfinite)
        if self.state.consecutive_nonfinite >= cfg.max_consecutive_nonfinite:
            raise NonFiniteError(
                f"step {self.state.step}: {self.state.consecutive_nonfinite} optimizer steps in a row had a "
                f"non-finite loss or gradient (limit max_consecutive_nonfinite="
                f"{cfg.max_consecutive_nonfinite}); lower learning_rate, enable max_grad_norm, or check the data"
            )
        self.on_step_end(metrics)
        for cb in self.callbacks:
            cb.on_step_end(self, metrics)
        self._accumulate_log(metrics)
        step = self.state.step
        eval_metrics: dict[str, float] = {}
        if cfg.eval_steps and step % cfg.eval_steps == 0:
            eval_metrics = self.run_evaluation()
        logs = None
        if step % cfg.logging_steps == 0 or step == cfg.max_steps or eval_metrics:
            logs = self.log(eval_metrics)
        if self._pbar is not None:
            self._pbar.update(1)
        if cfg.save_steps and step % cfg.save_steps == 0:
            self.save_checkpoint()
        return logs

    def run_evaluation(self) -> dict[str, float]:
        """``evaluate()``, the evaluation callbacks, and the best-model copy (``metric_for_best_model``)."""
        metrics = self.evaluate()
        for cb in self.callbacks:
            cb.on_evaluate(self, metrics)
        key = getattr(self.config, "metric_for_best_model", None)
        if key and key in metrics and self.model is not None:
            value = float(metrics[key])
            better = getattr(self.config, "greater_is_better", True)
            best = self.state.best_metric
            if best is None or (value > best if better else value < best):
                self.state.best_metric, self.state.best_step = value, self.state.step
                sd = self.accelerator.unwrap_model(self.model).state_dict()
                self._best_state = {k: v.detach().clone() for k, v in sd.items()}
            metrics = {
                **metrics,
                "eval/best": float(self.state.best_metric),
                "eval/best_step": self.state.best_step,
            }
        return metrics

    def load_best_model(self) -> bool:
        """Put the best evaluated weights (``metric_for_best_model``) back into the model; False if none."""
        if self._best_state is None or self.model is None:
            return False
        self.accelerator.unwrap_model(self.model).load_state_dict(self._best_state)
        return True

    # --- Logging.

    def _accumulate_log(self, metrics: dict[str, Any]) -> None:
        # A loss metric counts with its micro-batches' weight on this process (set by optimizer_step), so
        # the logged mean over steps and processes is the weighted one; other metrics count once per step.
        for k, v in metrics.items():
            w = self._metric_weights.get(k, 1.0)
            s = self.state.log_window.setdefault(k, [0.0, 0.0])
            s[0] += _to_float(v) * w
            s[1] += w

    def log(self, extra: dict[str, float] | None = None) -> dict[str, float]:
        """Average the logging window over steps and processes (weighted, see ``_accumulate_log``), write it
        with the counters, and reset it."""
        acc = self.accelerator
        window = [self.state.log_window]
        self.state.log_window = {}
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            window = gather_object(window)
        keys = sorted({k for d in window for k in d})
        local = {}
        for k in keys:
            total, weight = (sum(d[k][i] for d in window if k in d) for i in (0, 1))
            local[k] = total / weight if weight > 0 else float("nan")
        logs = {"step": self.state.step, **local, **self.state.counters, **(extra or {})}
        if self.monitors:
            logs.update(self.monitors.update(self.state.step, logs))
            self.state.monitors = self.monitors.state_dict()
        if acc.is_main_process:
            with open(self.output_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps({k: _json_safe(v) for k, v in logs.items()}) + "\n")
            if self._pbar is not None:
                shown = {k: f"{logs[k]:.4g}" for k in self.progress_keys if k in logs}
                self._pbar.set_postfix(shown, refresh=False)
        if self.config.report_to:
            acc.log({k: v for k, v in logs.items() if k != "step"}, step=self.state.step)
        for cb in self.callbacks:
            cb.on_log(self, logs)
        return logs

    def record_outputs(self) -> None:
        """Add every file or folder that appeared in ``output_dir`` since the run started (plots, summaries,
        samples, the model) to the run manifest; called at checkpoints, at the end of training and by the
        recipes' end-of-run paths."""
        if self.accelerator.is_main_process and self.output_dir.is_dir():
            new = {p.name for p in self.output_dir.iterdir()} - self._preexisting
            record_run_files(self.output_dir, *sorted(n for n in new if not n.startswith(".")))

    def log_step_record(self, filename: str, records: list[dict[str, Any]]) -> None:
        """Append records (each with a ``step``) to a per-step JSONL log of the run (main process only);
        resume cuts it back to the checkpoint like ``metrics.jsonl``."""
        if not records or not self.accelerator.is_main_process:
            return
        if filename not in STEP_LOGS:
            raise ValueError(f"{filename!r} is not one of the run's step logs {STEP_LOGS}")
        record_run_files(self.output_dir, filename)
        with open(self.output_dir / filename, "a") as f:
            for r in records:
                f.write(json.dumps(r, default=str) + "\n")

    def _open_progress(self) -> None:
        if self.config.disable_progress_bar or not self.accelerator.is_main_process:
            return
        from tqdm.auto import tqdm

        self._pbar = tqdm(
            total=self.config.max_steps, initial=self.state.step, desc=type(self).__name__, dynamic_ncols=True
        )

    # --- Checkpoints and resume.

    def checkpoint_dir(self, step: int) -> Path:
        return self.output_dir / CHECKPOINT_DIR / f"step-{step}"

    def _rank_state(self) -> dict[str, Any]:
        return {
            "loop": dataclasses.asdict(self.state),
            "rng": ckpt.rng_state(),
            "extra": self.extra_state_dict(),
            "pending": [[list(u.micro_batches), u.metrics, u.total] for u in self._pending],
            "best": self._best_state,
        }

    def save_checkpoint(self) -> Path:
        """Write everything an exact resume needs into ``checkpoints/step-N`` (atomically, see
        ``align.checkpoint``): model, optimizer and schedule, and per process the loop state, random
        generators, extra state and pending update steps."""
        from safetensors.torch import save_model

        acc = self.accelerator
        final = self.checkpoint_dir(self.state.step)
        tmp = final.parent / f".{final.name}.tmp"
        if acc.is_main_process:
            ckpt.temporary_dir(final)
        acc.wait_for_everyone()
        if acc.is_main_process and self.model is not None:
            save_model(acc.unwrap_model(self.model), str(tmp / "model.safetensors"))
            if self.optimizer is not None:
                opt = getattr(self.optimizer, "optimizer", self.optimizer)
                torch.save(
                    {"optimizer": opt.state_dict(), "scheduler": self.lr_scheduler.state_dict()},
                    tmp / "optimizer.pt",
                )
        ckpt.save_state(tmp / f"rank{acc.process_index}", self._rank_state())
        acc.wait_for_everyone()
        if acc.is_main_process:
            ckpt.commit_dir(tmp, final, {"step": self.state.step, "processes": acc.num_processes})
            self._rotate_checkpoints()
            self.record_outputs()
        acc.wait_for_everyone()
        for cb in self.callbacks:
            cb.on_save(self, final)
        return final

    def _rotate_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if not limit:
            return
        for old in ckpt.list_checkpoints(self.output_dir / CHECKPOINT_DIR)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)

    def resume(self, checkpoint: str) -> None:
        """Load a checkpoint ('latest' = the newest complete one, falling back to an older complete one
        when it is damaged; or a path) and cut every step log back to its step."""
        root = self.output_dir / CHECKPOINT_DIR
        if checkpoint != "latest":
            self._load_checkpoint(Path(checkpoint))
        else:
            candidates = ckpt.list_checkpoints(root)[::-1]
            if not candidates:
                raise ckpt.CheckpointError(
                    f"--resume_from_checkpoint latest: no complete checkpoint under {root}"
                )
            for i, path in enumerate(candidates):
                try:
                    self._load_checkpoint(path)
                    break
                except ckpt.CheckpointError as e:
                    if i == len(candidates) - 1:
                        raise
                    print(f"align: {e}; resuming from the previous complete checkpoint {candidates[i + 1]}")
        if self.accelerator.is_main_process:
            for name in STEP_LOGS:
                cut_step_log(self.output_dir / name, self.state.step)
        self.accelerator.wait_for_everyone()

    def _load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_model

        acc = self.accelerator
        if not (path / ckpt.COMPLETE).is_file():
            raise ckpt.CheckpointError(
                f"--resume_from_checkpoint: {str(path)!r} is not a complete checkpoint (no {ckpt.COMPLETE} marker)"
            )
        marker = json.loads((path / ckpt.COMPLETE).read_text())
        if marker.get("processes", 1) != acc.num_processes:
            raise ckpt.CheckpointError(
                f"{path}: saved by {marker.get('processes')} processes, this run has {acc.num_processes}; "
                "resume with the same number of processes"
            )
        state = ckpt.load_state(
            path / f"rank{acc.process_index}", {t.__qualname__: t for t in self.plan_types}
        )
        if self.model is not None:
            try:
                load_model(
                    acc.unwrap_model(self.model), str(path / "model.safetensors"), device=str(acc.device)
                )
            except Exception as e:
                raise ckpt.CheckpointError(f"{path / 'model.safetensors'}: {type(e).__name__}: {e}") from None
        if self.optimizer is not None:
            opt_state = ckpt.load_torch_file(path / "optimizer.pt")
            getattr(self.optimizer, "optimizer", self.optimizer).load_state_dict(opt_state["optimizer"])
            self.lr_scheduler.load_state_dict(opt_state["scheduler"])
        self._restore(state)

    def _restore(self, state: dict[str, Any]) -> None:
        self.state = TrainerState(**state["loop"])
        ckpt.set_rng_state(state["rng"])
        self.load_extra_state_dict(state["extra"] or {})
        self.monitors.load_state_dict(self.state.monitors)
        self._pending = deque(
            UpdateStep(list(map(tuple, m)), metrics, total) for m, metrics, total in state["pending"]
        )
        self._best_state = state["best"]
        self._data_iter = None

    def _start_epoch(self, skip: int = 0) -> None:
        dl = self._dataloader
        assert dl is not None
        if hasattr(dl, "set_epoch"):
            dl.set_epoch(self.state.epoch)
        if skip:
            dl = self.accelerator.skip_first_batches(dl, skip)
        self._data_iter = iter(dl)


# --- The run directory.


def check_output_dir(
    output_dir: str | Path,
    *,
    resume: bool,
    overwrite: bool,
    accelerator: Any = None,
    markers: tuple[str, ...] = RUN_MARKERS,
    resumable: bool = True,
    check_only: bool = False,
) -> None:
    """The one output-directory guard, run before anything is written.

    A directory holding a previous run is an error unless the run resumes it or ``overwrite`` is set; with
    ``overwrite`` everything that run wrote (its ``run_files.json`` list and the known names) is removed,
    and any other file of the user's stays. A start that failed before it trained, logged or saved anything
    (it left only the ``config.yaml`` and ``run_files.json`` it listed as its own) is no previous run: its
    files are removed and this run starts. The directory, or before it exists the folder it will be made
    in, must be a writable folder (else ``NotADirectoryError`` or ``PermissionError``).

    ``check_only``: raise the same errors, but remove and make nothing. Recipes call it so as soon as their
    config is parsed, so that a refused directory is said before any model loads.
    """
    out = Path(output_dir)
    found = previous_run(out, markers)
    failed_start = []
    if set(found) <= {CONFIG_FILE, MANIFEST_FILE} and set(found) - {MANIFEST_FILE} <= set(run_files(out)):
        failed_start, found = found, []
    if found and not resume and not overwrite:
        resume_hint = "--resume_from_checkpoint latest to continue it, " if resumable else ""
        raise FileExistsError(
            f"output_dir {str(out)!r} already holds a previous run ({', '.join(found)}). Nothing was changed. "
            f"Pass {resume_hint}--overwrite_output_dir to replace it, or choose another --output_dir."
        )
    _check_writable(out)
    if check_only:
        return
    main = accelerator is None or accelerator.is_main_process
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if main:
        stale = set(run_files(out)) | set(found) if found and overwrite and not resume else set()
        if not resume:
            stale |= set(failed_start)
        for name in stale:
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        out.mkdir(parents=True, exist_ok=True)
    if accelerator is not None:
        accelerator.wait_for_everyone()


def _check_writable(out: Path) -> None:
    """``out``, or before it exists the folder it will be made in, must be a writable folder."""
    import os

    folder = out
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(
            f"output_dir {str(out)!r}: {str(folder)!r} is a file, not a folder; choose another --output_dir."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        made_in = "" if folder == out else f" (it would be made in {str(folder)!r}, which is not writable)"
        raise PermissionError(
            f"output_dir {str(out)!r} is not writable{made_in}; choose another --output_dir or make it writable."
        )


def previous_run(output_dir: str | Path, markers: tuple[str, ...] = RUN_MARKERS) -> list[str]:
    """The files and folders of ``markers`` present in ``output_dir``: non-empty when it holds a run."""
    return [m for m in markers if (Path(output_dir) / m).exists()]


def run_files(output_dir: str | Path) -> list[str]:
    """The names (files or folders, relative to ``output_dir``) that runs in it recorded as theirs."""
    path = Path(output_dir) / MANIFEST_FILE
    if not path.is_file():
        return []
    return [n for n in json.loads(path.read_text()) if isinstance(n, str) and ".." not in Path(n).parts]


def record_run_files(output_dir: str | Path, *names: str) -> None:
    """Add names (relative to ``output_dir``) to the run's manifest, so ``--overwrite_output_dir`` removes them."""
    out = Path(output_dir)
    known = run_files(out)
    new = [n for n in names if n not in known]
    if new:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST_FILE).write_text(json.dumps(sorted([*known, *new, MANIFEST_FILE])) + "\n")


def cut_step_log(path: Path, step: int) -> None:
    """Keep the lines of a JSONL step log whose ``step`` is at most ``step`` (they will be logged again)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in kept))


def _env_flag(name: str) -> bool:
    import os

    return os.environ.get(name, "false").lower() in ("true", "1", "yes")


def _fsdp_on_cpu(mixed_precision: str) -> None:
    """Turn accelerate's state from gloo DDP into FSDP2 (``accelerate_configs/cpu_fsdp2.yaml``).

    accelerate 1.16 switches to FSDP only from its GPU-like distributed types, so on CPU an FSDP config
    silently runs DDP. torch's FSDP2 (``fully_shard``) itself works on CPU over gloo, and accelerate's FSDP2
    path (prepare, backward, clipping, full state dict) does not care about the device, so we set the state
    as accelerate sets it on a GPU: distributed type FSDP in both shared states (``AcceleratorState()``
    re-reads ``PartialState``'s), and the plugin built from the launcher's ``FSDP_*`` variables.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ConfigError(
            "FSDP on CPU: set fsdp_version: 2 in the accelerate config (FSDP1 is not supported)"
        )
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def _has_other_accelerator() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool((mps is not None and mps.is_available()) or (xpu is not None and xpu.is_available()))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders ``output_dir/checkpoints/step-N``, oldest first."""
    return ckpt.list_checkpoints(Path(output_dir) / CHECKPOINT_DIR)


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _flat_config(cfg: Any) -> dict[str, Any]:
    # Trackers accept scalars only.
    return {
        k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config_to_dict(cfg).items()
    }


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl`` back as a list of dicts (one per logged step)."""
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
