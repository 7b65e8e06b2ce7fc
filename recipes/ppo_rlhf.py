"""RLHF with PPO and a KL penalty (InstructGPT), and the whole three-stage pipeline.

PPO alone, against a trained reward model (or any reward of align.rewards), on the embedded
SmolLM2-135M-Instruct and the prompts of the project's preference pairs (data/prefs), on CPU:

    accelerate launch recipes/reward_model.py --output_dir outputs/reward_model --merge_lora_on_save true
    accelerate launch recipes/ppo_rlhf.py --config recipes/configs/ppo/smollm2.yaml

The whole pipeline, one stage after another, each in its own folder under output_dir: SFT (or the
instruct model as is), the Bradley-Terry reward model, PPO against it, and DPO on the same preference
pairs and budget, with both policies' held-out reward and KL on one plot (frontier.png, as in the DPO
paper's Figure 2):

    accelerate launch recipes/ppo_rlhf.py --pipeline recipes/configs/ppo/smollm2_pipeline.yaml

Real models on GPUs:

    accelerate launch --config_file accelerate_configs/zero2.yaml recipes/ppo_rlhf.py \\
        --config recipes/configs/ppo/qwen2.5-0.5b-instruct_lora.yaml

Outputs of a PPO run: metrics.jsonl, config.yaml, completions.jsonl, summary.json (held-out score and KL
before and after), reward_kl.png (score against KL over training), model/ (the policy or its LoRA
adapter) and value_model/ or model/value_head.safetensors.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from align.chat_data import load_rows, tokenize_sft
from align.config import ConfigError
from align.errors import DataError, run_main
from align.eval.reward_kl import reward_kl_evaluator
from align.recipe_helpers import (
    finish_recipe,
    load_classifier_and_tokenizer,
    load_policy_and_tokenizer,
    parse_recipe_config,
    reset_accelerate_state,
)
from align.rewards import get_reward_funcs
from align.trainer import Callback, previous_run, read_metrics
from align.trainers.ppo import PPOConfig, PPOTrainer

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("sft", "reward_model", "ppo", "dpo")


def _prompt_rows(rows: Any, source: str) -> list[dict]:
    """Prompt-only rows: preference pairs keep their prompt (and any verifier columns), not the answers.

    ``source`` names the dataset and split in the error for a row without a prompt."""
    drop = {"chosen", "rejected", "completion", "messages"}
    out = []
    for i, r in enumerate(rows):
        if "prompt" not in r:
            raise DataError(
                f"{source}, row {i}: PPO needs a 'prompt' column (messages or text); the row has {sorted(r)}"
            )
        out.append({k: v for k, v in r.items() if k not in drop})
    return out


class RewardKLCallback(Callback):
    """Every ``every`` steps, the held-out reward and KL of the trainer's policy (``frontier.jsonl``).

    Works for any trainer whose policy is ``trainer.policy`` or ``trainer.model`` and whose reference is
    ``trainer.ref_model`` (``None`` = the LoRA adapter disabled): PPO and DPO are measured alike.
    """

    def __init__(
        self, name: str, path: Path, rows: list[dict], reward: Any, every: int, **kwargs: Any
    ) -> None:
        self.name, self.path, self.rows, self.reward, self.every, self.kwargs = (
            name,
            path,
            rows,
            reward,
            every,
            kwargs,
        )

    def measure(self, trainer: Any) -> None:
        from align.eval.reward_kl import reward_and_kl
        from align.models import unwrap_model

        policy = getattr(trainer, "policy", None) or unwrap_model(trainer.model)
        res = reward_and_kl(
            policy, trainer.tokenizer, self.rows, self.reward, reference=trainer.ref_model, **self.kwargs
        )
        if trainer.accelerator.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps({"method": self.name, "step": trainer.state.step, **res}) + "\n")

    def on_train_begin(self, trainer: Any) -> None:
        if trainer.state.step == 0:
            self.measure(trainer)

    def on_step_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        if trainer.state.step % self.every == 0 or trainer.state.step == trainer.config.max_steps:
            self.measure(trainer)


def plot_reward_kl(output_dir: str | Path) -> Path | None:
    """reward_kl.png: the rollout score against the rollout KL per PPO iteration, coloured by step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [
        r for r in read_metrics(output_dir) if "completions/tokens" in r and "kl" in r
    ]  # one row per iteration
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    sc = ax.scatter([r["kl"] for r in rows], [r["score/mean"] for r in rows], c=[r["step"] for r in rows])
    fig.colorbar(sc, label="step")
    ax.set_xlabel("KL(pi || pi_ref) per sequence (nats)")
    ax.set_ylabel("reward-model score")
    ax.set_title("PPO rollouts: reward against KL")
    path = Path(output_dir) / "reward_kl.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_frontier(path: Path) -> Path | None:
    """frontier.png from frontier.jsonl: held-out reward against KL for each method (DPO paper, Fig. 2)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    points = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, marker in (("ppo", "o"), ("dpo", "s")):
        pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["step"])
        if pts:
            ax.plot([p["kl"] for p in pts], [p["score"] for p in pts], marker=marker, label=method.upper())
    ax.set_xlabel("held-out KL(pi || pi_ref) per sequence (nats)")
    ax.set_ylabel("held-out reward-model score")
    ax.set_title("Reward against KL to the reference")
    ax.legend()
    out = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(args: list[str] | None = None, callbacks: list | None = None) -> dict:
    """PPO-RLHF from a config (``--config``, CLI flags); ``--pipeline PATH`` runs the staged pipeline."""
    args = list(sys.argv[1:] if args is None else args)
    if "--pipeline" in args:
        i = args.index("--pipeline")
        if i + 1 >= len(args):
            raise ConfigError("--pipeline needs a YAML path")
        return run_pipeline(args[i + 1], args[:i] + args[i + 2 :])
    cfg = parse_recipe_config(PPOConfig, args)
    policy, tokenizer = load_policy_and_tokenizer(cfg)
    value_model = None
    if cfg.value_model == "separate":
        value_model, _ = load_classifier_and_tokenizer(_value_model_config(cfg))
    train, heldout, ptx = _load_data(cfg, tokenizer)
    rewards = get_reward_funcs(cfg.reward_funcs)
    for r in rewards:  # reward models run in the policy's dtype and batch size unless told otherwise
        if hasattr(r, "batch_size"):
            r.batch_size = cfg.reward_model_batch_size
    from datasets import Dataset

    trainer = PPOTrainer(
        cfg,
        policy,
        tokenizer,
        rewards,
        Dataset.from_list(train),
        value_model=value_model,
        evaluator=reward_kl_evaluator(heldout, limit=cfg.eval_limit, num_samples=cfg.eval_samples)
        if heldout
        else None,
        ptx_dataset=ptx,
        callbacks=callbacks,
    )
    before = trainer.evaluate() if heldout and not cfg.resume_from_checkpoint else {}
    trainer.train()
    after = trainer.evaluate() if heldout else {}
    plot_reward_kl(cfg.output_dir)
    summary = {
        "heldout_score_before": before.get("eval/score"),
        "heldout_score_after": after.get("eval/score"),
        "heldout_kl_before": before.get("eval/kl"),
        "heldout_kl_after": after.get("eval/kl"),
        "heldout_prompts": after.get("eval/n"),
        "steps": trainer.state.step,
        "final_beta": trainer.kl_ctl.value,
    }
    message = None
    if after:
        message = (
            f"held-out score {summary['heldout_score_before']:.3f} -> {summary['heldout_score_after']:.3f}, "
            f"KL to the reference {summary['heldout_kl_after']:.3f} nats after {trainer.state.step} steps; "
            f"outputs in {cfg.output_dir}"
        )
    return finish_recipe(trainer, cfg, summary, message)


def _load_data(cfg: PPOConfig, tokenizer: Any) -> tuple[list[dict], list[dict] | None, Any]:
    """The training prompts, the held-out prompts (None without an eval split) and the tokenised ptx
    data (None without ``ptx_coef``)."""
    rows = load_rows(cfg.dataset_name, cfg.dataset_split, default="prefs")
    train = _prompt_rows(rows, f"{cfg.dataset_name or 'data/prefs'} ({cfg.dataset_split})")
    heldout = None
    if cfg.eval_split.strip().lower() not in ("", "none"):
        eval_name = cfg.eval_dataset_name or cfg.dataset_name
        heldout = _prompt_rows(
            load_rows(eval_name, cfg.eval_split, default="prefs"),
            f"{eval_name or 'data/prefs'} ({cfg.eval_split})",
        )
    ptx = None
    if cfg.ptx_coef > 0:
        name = None if cfg.ptx_dataset_name == "default" else cfg.ptx_dataset_name
        ptx, ptx_stats = tokenize_sft(
            load_rows(name, "train", default="sft"), tokenizer, max_length=cfg.ptx_max_length, name="ptx data"
        )
        ptx_stats.log()
        ptx_stats.check_any_kept()
    return train, heldout, ptx


def _value_model_config(cfg: PPOConfig) -> Any:
    """A ModelConfig-like view for the value model: its own path (default: the policy's), same dtype/LoRA."""
    import copy

    vcfg = copy.copy(cfg)
    vcfg.model_name_or_path = cfg.value_model_name_or_path or cfg.model_name_or_path
    return vcfg


# ------------------------------------------------------------------------------------------------------------
# The staged pipeline
# ------------------------------------------------------------------------------------------------------------


def _load_recipe(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stage_args(stage_cfg: dict, output_dir: Path, extra: dict) -> list[str]:
    merged = {**stage_cfg, **extra, "output_dir": str(output_dir)}
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    path = output_dir.parent / f"{output_dir.name}_config.yaml"
    path.write_text(yaml.safe_dump(merged, sort_keys=False))
    return ["--config", str(path)]


def run_pipeline(path: str, cli: list[str] | None = None) -> dict:
    """Run the stages named in the pipeline YAML (``stages: [sft, reward_model, ppo, dpo]``).

    A later run with fewer stages reuses the earlier run's outputs in the same ``output_dir`` (its SFT
    model, its reward model) and replaces only the re-run methods' frontier points.

    Each stage's section holds that recipe's config keys; the pipeline wires them together: the policy of
    PPO and DPO is the SFT model when SFT runs (else the stage's own ``model_name_or_path``), PPO's reward
    is the trained reward model, and with ``frontier: {...}`` both PPO and DPO are measured on the same
    held-out prompts by the same reward model every ``every`` steps (frontier.jsonl / frontier.png).
    """
    spec, stages = _read_pipeline(path, cli)
    out = Path(spec.get("output_dir", "outputs/ppo_rlhf_pipeline"))
    frontier = spec.get("frontier")
    frontier_path = out / "frontier.jsonl"
    rm_path = out / "reward_model" / "model"
    base_model = spec.get("model_name_or_path")
    policy_path = _check_pipeline_outputs(path, spec, stages, out, rm_path) or base_model
    if frontier and frontier_path.exists():
        _drop_frontier_points(frontier_path, {"ppo", "dpo"} & set(stages))

    def callbacks(name: str) -> list:
        return _frontier_callbacks(name, frontier, frontier_path, rm_path) if frontier else []

    results: dict[str, Any] = {}
    model_key = {} if base_model is None else {"model_name_or_path": base_model}
    if "sft" in stages:
        reset_accelerate_state()  # each stage builds its own Accelerator in this process
        sft_cfg = {**model_key, **(spec.get("sft") or {})}
        results["sft"] = _load_recipe("sft").main(
            _stage_args(sft_cfg, out / "sft", {"merge_lora_on_save": True})
        )
        policy_path = str(out / "sft" / "model")
    if "reward_model" in stages:
        reset_accelerate_state()
        rm_cfg = {**model_key, **(spec.get("reward_model") or {})}
        results["reward_model"] = _load_recipe("reward_model").main(
            _stage_args(rm_cfg, out / "reward_model", {"merge_lora_on_save": True})
        )
    policy_key = {} if policy_path is None else {"model_name_or_path": policy_path}
    if "ppo" in stages:
        reset_accelerate_state()
        ppo_cfg = {**policy_key, **(spec.get("ppo") or {})}
        ppo_cfg.setdefault("reward_funcs", [f"reward_model:{rm_path}"])
        results["ppo"] = main(_stage_args(ppo_cfg, out / "ppo", {}), callbacks=callbacks("ppo"))
    if "dpo" in stages:
        reset_accelerate_state()
        dpo_cfg = {**policy_key, **(spec.get("dpo") or {})}
        results["dpo"] = _load_recipe("dpo").main(
            _stage_args(dpo_cfg, out / "dpo", {}), callbacks=callbacks("dpo")
        )
    if frontier and frontier_path.exists():
        plot_frontier(frontier_path)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"pipeline {stages} done; outputs in {out}")
    return results


def _read_pipeline(path: str, cli: list[str] | None) -> tuple[dict, list[str]]:
    """The pipeline file as a mapping, and its stages; a bad file is a ``ConfigError`` naming the key."""
    try:
        spec = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--pipeline: cannot read the pipeline file {path}: {e}") from e
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with 'stages' and one section per stage")
    unknown = set(spec) - {"output_dir", "stages", "frontier", "model_name_or_path", *STAGES}
    if unknown:
        raise ConfigError(f"{path}: unknown keys {sorted(unknown)}; expected output_dir, stages, frontier, "
                          f"model_name_or_path and sections {list(STAGES)}")  # fmt: skip
    stages = spec.get("stages") or ["sft", "reward_model", "ppo"]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"{path}: unknown stages {bad}; choose from {list(STAGES)}")
    if cli:
        raise ConfigError(f"with --pipeline, put options in the pipeline file (got extra arguments {cli})")
    return spec, stages


def _check_pipeline_outputs(path: str, spec: dict, stages: list[str], out: Path, rm_path: Path) -> str | None:
    """Refuse, before any stage runs (so a refused stage never leaves the pipeline half-done), a stage whose
    folder holds a previous run, and a run that needs a reward model it neither trains nor finds. Returns
    the SFT model an earlier run left when this run has no sft stage (later stages start from it), else None.
    """
    for stage in stages:
        section = spec.get(stage) or {}
        found = previous_run(out / stage)
        if found and not (section.get("overwrite_output_dir") or section.get("resume_from_checkpoint")):
            raise FileExistsError(f"{out / stage} already holds a previous run of the {stage} stage "
                                  f"({', '.join(found)}). Nothing was changed. Set overwrite_output_dir: true "
                                  f"(or resume_from_checkpoint: latest) in the pipeline's {stage} section, drop "
                                  "the stage from stages, or choose another output_dir.")  # fmt: skip
    earlier_sft = None
    if "sft" not in stages and (out / "sft" / "model").is_dir():
        earlier_sft = str(out / "sft" / "model")
        print(f"ppo_rlhf: the sft stage is not in this run; using its earlier output {earlier_sft}")
    needs_rm = ("ppo" in stages and "reward_funcs" not in (spec.get("ppo") or {})) or spec.get("frontier")
    if needs_rm and "reward_model" not in stages and not rm_path.is_dir():
        raise ConfigError(f"{path}: PPO's reward and the frontier need the reward model at {rm_path}, but "
                          "'reward_model' is not in stages and no earlier run left one there; add the stage")  # fmt: skip
    return earlier_sft


def _drop_frontier_points(frontier_path: Path, rerun: set[str]) -> None:
    """A re-run of some stages replaces their points and keeps the others' (e.g. stages: [dpo] after a full
    run), so the plot never mixes two runs of one method."""
    kept = [
        line
        for line in frontier_path.read_text().splitlines()
        if line.strip() and json.loads(line).get("method") not in rerun
    ]
    frontier_path.write_text("".join(line + "\n" for line in kept))


def _frontier_callbacks(name: str, frontier: dict, frontier_path: Path, rm_path: Path) -> list:
    """The ``RewardKLCallback`` that measures method ``name`` on the frontier's held-out prompts."""
    from align.rewards.reward_model import make_reward_model_reward

    f_name, f_split = frontier.get("dataset_name"), frontier.get("split", "test")
    rows = _prompt_rows(
        load_rows(f_name, f_split, default="prefs"), f"frontier data {f_name or 'data/prefs'} ({f_split})"
    )
    rows = rows[: int(frontier.get("limit", 32))]
    reward = make_reward_model_reward(rm_path, batch_size=16)
    return [
        RewardKLCallback(
            name, frontier_path, rows, reward, int(frontier.get("every", 4)),
            max_new_tokens=int(frontier.get("max_new_tokens", 48)), num_samples=int(frontier.get("samples", 1)),
            seed=int(frontier.get("seed", 0)),
        )
    ]  # fmt: skip


if __name__ == "__main__":
    run_main(main, "ppo_rlhf")
