"""`EvalConfig` and `run_eval`: what `align eval` and `recipes/eval.py` run.

    align eval --task math500 arc_easy --model Qwen/Qwen2.5-0.5B-Instruct --limit 100
    align eval --task math500 --data_path math500=path/to/math500.jsonl --adapter outputs/grpo/model
    python recipes/eval.py --config recipes/configs/eval/smollm2_cpu.yaml

Loads the model once (a LoRA adapter is attached and merged for speed), runs every task in its mode,
and writes the outputs described in `align.eval.report`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from align.config import ConfigError, check_choice, check_range, check_types, save_config
from align.eval.harness import TaskResult, evaluate_generate, evaluate_loglikelihood
from align.eval.report import write_outputs
from align.eval.tasks import TASKS, get_task

__all__ = ["EvalConfig", "load_eval_model", "run_eval"]

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Evaluate a model (optionally with a LoRA adapter) on MATH500, GSM8K and ARC with the reward verifiers."""

    tasks: list[str] = field(default_factory=lambda: ["math"], metadata={"aliases": ["--task"]})
    """Tasks to run: math500, gsm8k, arc_easy, arc_challenge, or math (the project's generated test set in
    MATH-500 schema, offline). Several at once: --task math500 arc_easy (or math500,arc_easy)."""
    model_name_or_path: str | None = field(default=None, metadata={"aliases": ["--model"]})
    """Hub id or local path of the model (or of a saved LoRA adapter); empty = the embedded SmolLM2-135M-Instruct."""
    adapter: str | None = None
    """A LoRA adapter directory to put on top of the model (merged into the weights for evaluation)."""
    dtype: str = "auto"
    """Weights dtype: auto (bf16 on a GPU with bf16 support, fp32 on CPU), float32, bfloat16, float16."""
    trust_remote_code: bool = False
    """Allow model repos to run their own Python code. Off unless you trust the repo."""
    attn_implementation: str | None = None
    """Attention kernel: eager, sdpa, flash_attention_2 (default: transformers' choice)."""
    data_paths: list[str] = field(default_factory=list, metadata={"aliases": ["--data_path"]})
    """Local data instead of the hub, as TASK=PATH (a .jsonl / .json / .parquet file or a folder with
    <split>.jsonl); with a single task PATH alone. Tasks without one load their hub dataset."""
    split: str | None = None
    """Dataset split (folder or hub); default: each task's test split."""
    limit: int | None = None
    """Evaluate only the first N problems of each task (None = all)."""
    mode: Literal["auto", "generate", "loglikelihood"] = "auto"
    """auto: each task's default (generate for math500/gsm8k/math, loglikelihood for ARC, as lm-eval
    reports it); generate: sampled answers scored by the reward verifier; loglikelihood: multiple choice
    by log-likelihood (ARC only)."""
    num_samples: int = 1
    """Completions per problem (n). pass@k and maj@k are reported for k = 1, 2, 4, ... up to n."""
    pass_k: list[int] = field(default_factory=list)
    """pass@k / maj@k sizes to report instead of the default 1, 2, 4, ..., n (each at most num_samples)."""
    temperature: float = 0.0
    """Sampling temperature; 0 = greedy (then num_samples must be 1)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""
    top_k: int = 0
    """Sample from the k most likely tokens only (0 = off)."""
    max_new_tokens: int = 1024
    """Most tokens generated per completion (a truncated completion is scored as it is)."""
    seed: int = 0
    """Sampling seed: batch b uses seed + b, so a run is repeatable."""
    batch_size: int = 16
    """Generate mode: problems per generate call (rows = batch_size x num_samples)."""
    loglikelihood_batch_size: int = 64
    """Loglikelihood mode: (question, choice) pairs per forward pass, as lm-eval's batch_size."""
    backend: Literal["hf", "vllm"] = "hf"
    """Generation backend: transformers generate or vLLM (colocated, needs `pip install 'align[vllm]'`)."""
    vllm_gpu_memory_utilization: float = 0.85
    """vllm backend: fraction of GPU memory vLLM may take."""
    math_timeout_s: float = 5.0
    """Seconds the math verifier may spend on one completion; a timeout counts as wrong and is counted."""
    system_prompt: str | None = None
    """An optional system message before each math problem."""
    verifier_agreement: bool = True
    """Math tasks: also score the completions with the training reward and lm-evaluation-harness's MATH
    checker and write <task>/agreement.json (see `align.eval.agreement`); skipped, with a note, without lm-eval."""
    output_dir: str = "outputs/eval"
    """Where config.yaml, summary.json, report.md and one folder per task (samples.jsonl, ...) go."""
    overwrite_output_dir: bool = False
    """Allow writing into an output_dir that holds a previous evaluation (its files are replaced)."""
    disable_progress_bar: bool = False
    """Turn off the progress bars."""

    def __post_init__(self) -> None:
        check_types(self)  # every field converted to its declared type, however the config is built
        self.validate()

    def validate(self) -> None:
        tasks: list[str] = []
        for item in [self.tasks] if isinstance(self.tasks, str) else self.tasks:
            tasks += [t.strip().lower() for t in str(item).split(",") if t.strip()]
        if not tasks:
            raise ConfigError("tasks must name at least one task")
        for t in tasks:
            check_choice("tasks", t, list(TASKS))
        if len(set(tasks)) != len(tasks):
            raise ConfigError(f"tasks: each task may appear once, got {tasks}")
        self.tasks = tasks
        if isinstance(self.data_paths, str):
            self.data_paths = [self.data_paths]
        self.data_path_by_task()  # raises on a bad entry
        for t in tasks:
            self.task_mode(t)  # raises for a mode the task lacks
        check_range("limit", self.limit, 1, allow_none=True)
        check_range("num_samples", self.num_samples, 1)
        check_range("temperature", self.temperature, 0.0)
        check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)
        check_range("top_k", self.top_k, 0)
        check_range("max_new_tokens", self.max_new_tokens, 1)
        check_range("seed", self.seed, 0)
        check_range("batch_size", self.batch_size, 1)
        check_range("loglikelihood_batch_size", self.loglikelihood_batch_size, 1)
        check_range("math_timeout_s", self.math_timeout_s, 0.0, low_inclusive=False)
        check_range(
            "vllm_gpu_memory_utilization", self.vllm_gpu_memory_utilization, 0.0, 1.0, low_inclusive=False
        )
        check_choice("dtype", self.dtype, ["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"])
        if self.num_samples > 1 and self.temperature == 0:
            raise ConfigError(
                f"num_samples={self.num_samples} needs temperature > 0 (greedy decoding repeats one answer)"
            )
        bad = [k for k in self.pass_k if not 1 <= k <= self.num_samples]
        if bad:
            raise ConfigError(f"pass_k must be in [1, num_samples={self.num_samples}], got {bad}")
        if self.model_name_or_path == "":
            self.model_name_or_path = None
        if self.adapter == "":
            self.adapter = None

    def data_path_by_task(self) -> dict[str, str]:
        """`data_paths` as {task: path}."""
        out: dict[str, str] = {}
        for entry in self.data_paths:
            name, sep, path = str(entry).partition("=")
            if not sep:
                if len(self.tasks) != 1:
                    raise ConfigError(
                        f"data_paths: {entry!r} names no task; with several tasks write TASK=PATH "
                        f"(tasks: {', '.join(self.tasks)})"
                    )
                name, path = self.tasks[0], entry
            name = name.strip().lower()
            if name not in self.tasks:
                raise ConfigError(
                    f"data_paths: {entry!r} is for task {name!r}, which is not in tasks {self.tasks}"
                )
            if name in out:
                raise ConfigError(f"data_paths: two paths for task {name!r}")
            out[name] = path.strip()
        return out

    def task_mode(self, task: str) -> str:
        """The mode `task` runs in (`mode`, or the task's default for "auto")."""
        supported = get_task(task).modes
        if self.mode == "auto":
            return supported[0]
        if self.mode not in supported:
            raise ConfigError(
                f"mode {self.mode!r} is not available for task {task!r}; it supports {list(supported)}"
            )
        return self.mode


def load_eval_model(
    model_name_or_path: str | None = None,
    adapter: str | None = None,
    *,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
):
    """(model, tokenizer) in eval mode. A LoRA adapter (given as `adapter`, or as the model path itself) is
    loaded with peft and merged into the weights (`merge_and_unload`): evaluation needs no separate
    adapter matmuls. The tokenizer comes from the adapter folder when it holds one, else from the model."""
    from align.models import load_causal_lm, load_tokenizer, resolve_model_path

    model = load_causal_lm(
        model_name_or_path,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )
    if adapter is not None:
        if not (Path(adapter) / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"adapter: {adapter} holds no adapter_config.json (not a LoRA adapter folder)"
            )
        from peft import PeftModel

        from align.models import _quiet_peft  # peft 0.21 trips a transformers deprecation warning

        with _quiet_peft():
            model = PeftModel.from_pretrained(model, adapter)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    tokenizer_source = resolve_model_path(model_name_or_path)
    source = Path(tokenizer_source)
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file():
        tokenizer_source = adapter
    elif (source / "adapter_config.json").is_file() and not (source / "tokenizer_config.json").is_file():
        tokenizer_source = json.loads((source / "adapter_config.json").read_text())["base_model_name_or_path"]
    tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=trust_remote_code)
    return model, tokenizer


def _check_output_dir(cfg: EvalConfig) -> Path:
    """The run-directory guard every align run uses (``align.trainer.check_output_dir``), with the files an
    evaluation writes as the marks of a previous one; the names it will write go into the run manifest."""
    from align.trainer import MANIFEST_FILE, check_output_dir, record_run_files

    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output_dir {out} exists and is not a folder")
    markers = ("summary.json", "report.md", "config.yaml", MANIFEST_FILE, *cfg.tasks)
    check_output_dir(out, resume=False, overwrite=cfg.overwrite_output_dir, markers=markers, resumable=False)
    record_run_files(out, "summary.json", "report.md", "config.yaml", *cfg.tasks)
    return out


def _versions() -> dict[str, str]:
    import torch
    import transformers

    import align

    return {"align": align.__version__, "torch": torch.__version__, "transformers": transformers.__version__}


def run_eval(cfg: EvalConfig, *, model: Any = None, tokenizer: Any = None) -> dict[str, TaskResult]:
    """Run every task of `cfg` and write the outputs; returns {task: TaskResult}.

    `model` and `tokenizer` may be passed in (already loaded); otherwise they are loaded from the config.
    """
    out = _check_output_dir(cfg)
    save_config(cfg, out / "config.yaml")
    logger.info("align eval: %s", dataclasses.asdict(cfg))
    if model is None:
        model, tokenizer = load_eval_model(
            cfg.model_name_or_path,
            cfg.adapter,
            dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code,
            attn_implementation=cfg.attn_implementation,
        )
    elif tokenizer is None:
        raise ValueError("run_eval: pass the tokenizer along with the model")
    paths = cfg.data_path_by_task()
    modes = {t: cfg.task_mode(t) for t in cfg.tasks}
    generator = _make_generator(cfg, model, tokenizer) if "generate" in modes.values() else None
    results: dict[str, TaskResult] = {}
    for name in cfg.tasks:
        results[name] = _run_task(cfg, name, modes[name], paths.get(name), model, tokenizer, generator)
        _print_result(name, results[name].summary)
    write_outputs(list(results.values()), out, _run_meta(cfg))
    if cfg.verifier_agreement:
        _write_agreements(results, out)
    print(f"outputs in {out}")
    return results


def _write_agreements(results: dict[str, TaskResult], out: Path) -> None:
    """<task>/agreement.json for each generate-mode math task, and one line of its rates."""
    from align.eval.agreement import MATH_TASKS, LmEvalMath, verifier_agreement, write_agreement

    math_results = [
        r for r in results.values() if r.task in MATH_TASKS and r.mode == "generate" and r.samples
    ]
    if not math_results:
        return
    try:
        lm_eval = LmEvalMath()
    except ImportError as err:
        print(f"verifier agreement skipped: {err}")
        return
    for result in math_results:
        table = verifier_agreement(result.samples, lm_eval=lm_eval, task=result.task)
        write_agreement(table, out / result.task / "agreement.json")
        print(table.one_line())


def _make_generator(cfg: EvalConfig, model: Any, tokenizer: Any) -> Any:
    """The sampler of the generate tasks: ``cfg.backend``'s, holding ``model``'s weights (adapter merged)."""
    from align.generation import make_generator

    kwargs: dict[str, Any] = {}
    if cfg.backend == "vllm":
        kwargs = {"gpu_memory_utilization": cfg.vllm_gpu_memory_utilization, "seed": cfg.seed}
    generator = make_generator(cfg.backend, model, tokenizer, **kwargs)
    if cfg.backend != "hf":
        generator.sync_weights(model)  # the merged adapter, if any
    return generator


def _run_task(
    cfg: EvalConfig, name: str, mode: str, source: str | None, model: Any, tokenizer: Any, generator: Any
) -> TaskResult:
    """Load task ``name``'s rows and evaluate them in ``mode``; the summary also records the time taken and
    where the data came from."""
    task = get_task(name, math_timeout_s=cfg.math_timeout_s, system_prompt=cfg.system_prompt)
    rows = task.load(source, cfg.split, cfg.limit)
    start = time.perf_counter()
    if mode == "loglikelihood":
        result = evaluate_loglikelihood(
            task,
            rows,
            model,
            tokenizer,
            batch_size=cfg.loglikelihood_batch_size,
            progress=not cfg.disable_progress_bar,
        )
    else:
        result = evaluate_generate(
            task,
            rows,
            generator,
            num_samples=cfg.num_samples,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            ks=cfg.pass_k or None,
            progress=not cfg.disable_progress_bar,
        )
    result.summary["seconds"] = round(time.perf_counter() - start, 3)
    default_source = task.default_source()
    result.summary["data"] = {
        "source": str(source) if source else (str(default_source) if default_source else task.hub_name),
        "split": cfg.split or task.default_split,
    }
    return result


def _print_result(name: str, s: dict[str, Any]) -> None:
    extra = f", acc_norm {s['acc_norm']:.4f}" if "acc_norm" in s else ""
    unscorable = s.get("unscorable", 0)
    excluded = f" ({unscorable} with an unscorable gold left out)" if unscorable else ""
    if s["accuracy"] is None:
        print(f"{name} ({s['mode']}): no accuracy: none of the {s['n']} problems has a scorable gold answer")
        return
    print(
        f"{name} ({s['mode']}): accuracy {s['accuracy']:.4f} [{s['accuracy_ci95'][0]:.4f}, "
        f"{s['accuracy_ci95'][1]:.4f}]{extra} on {s.get('n_scorable', s['n'])} problems{excluded}"
    )


def _run_meta(cfg: EvalConfig) -> dict[str, Any]:
    """The model, the settings that shape the numbers, and the library versions, for the report."""
    model = {
        "name_or_path": cfg.model_name_or_path or "embedded SmolLM2-135M-Instruct",
        "adapter": cfg.adapter,
    }
    settings = {
        k: getattr(cfg, k)
        for k in (
            "num_samples", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "limit", "split", "dtype",
            "backend", "batch_size", "loglikelihood_batch_size", "math_timeout_s", "system_prompt",
        )
    }  # fmt: skip
    return {"model": model, "settings": settings, "versions": _versions()}
