"""Multi-turn GRPO with a calculator tool: TRL's GRPOTrainer (`tools=[calculate]`) and align's GRPOTrainer
(`env_id`, token in / token out) side by side, same model, problems, tool, limits and settings.

    python benchmarks/multiturn_vs_trl.py                          # embedded SmolLM2-135M-Instruct, CPU
    python benchmarks/multiturn_vs_trl.py --steps 8 --max_completion_length 256 --max_turns 4

Each trainer runs in its own subprocess, one after the other (never concurrently), so peak resident memory
(ru_maxrss) is each run's own. Reported per trainer: episodes per second and sampled tokens per second
(tokens the policy generated; tool results excluded; the first step is warm-up and left out), seconds per
step, peak RSS, mean turns and tool calls per episode, mean return; then the ratios align / TRL.

One episode, on both sides, is TRL's tool loop: the model writes a message; if it holds tool calls
(`<tool_call>{"name": "calculate", ...}</tool_call>`, Hermes format), `calculate` (align.envs.tools) runs
and its result is appended as a tool message, and the model writes again; the first message without a tool
call ends the episode and is scored by the math verifier (align.rewards.math_reward). At most `max_turns`
messages (TRL: `max_tool_calling_iterations = max_turns - 1`); `max_completion_length` bounds the tokens
after the first prompt, sampled and tool tokens together (align: `max_episode_tokens`, and one message may
use all of it, as in TRL, which has no per-message cap). On align's side the environment is
`align/MathTools-v0`'s `MathToolEnv`, with a message holding neither a tool call nor a `\\boxed{}` answer
ending the episode (scored) instead of drawing a reminder, so that the episodes are TRL's.

Chat template: SmolLM2's own template does not render tools, and TRL refuses it (GRPOTrainer.__init__:
`if not supports_tool_calling(processing_class): raise ValueError("The provided chat template does not
support tool calling. ...")`; `add_response_schema` also has no parser for it). Both sides therefore use
TRL's Qwen2.5 template (the same ChatML tokens `<|im_start|>` / `<|im_end|>` SmolLM2 was tuned on, plus
the tool block and Hermes tool calls), set on the tokenizer before either trainer sees it (`--template
own` keeps SmolLM2's: align then shows the tools in a Hermes system block; TRL fails as above).

Settings: 8 episodes per step (2 problems x 4 generations), up to 3 messages and 48 tokens per episode,
beta 0.04, lr 1e-5, temperature 1.0, fp32, CPU.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_ENV_ID = "bench/MathToolsStop-v0"


def _common(args: argparse.Namespace) -> dict:
    return {
        "steps": args.steps,
        "episodes_per_step": args.batch,
        "num_generations": args.num_generations,
        "max_turns": args.max_turns,
        "max_completion_length": args.max_completion_length,
        "beta": args.beta,
        "lr": args.lr,
        "seed": args.seed,
        "template": args.template,
    }


def _tokenizer(args: argparse.Namespace):
    from align.models import load_tokenizer

    tok = load_tokenizer(None)
    if args.template == "qwen2_5":
        from trl.chat_template_utils import qwen2_5_chat_template

        tok.chat_template = qwen2_5_chat_template
    return tok


def _last_assistant(completion) -> str:
    if isinstance(completion, str):
        return completion
    texts = [m.get("content") or "" for m in completion if m.get("role") == "assistant"]
    return texts[-1] if texts else ""


def register_stop_env(max_turns: int) -> None:
    """Register `BENCH_ENV_ID`: `MathToolEnv` where a message with neither a tool call nor a boxed answer
    ends the episode, scored by the verifier (TRL's tool loop), instead of drawing a reminder."""
    import gymnasium as gym

    if BENCH_ENV_ID not in gym.registry:
        gym.register(id=BENCH_ENV_ID, entry_point=_stop_env, kwargs={"max_turns": max_turns})


def _stop_env(**kwargs):
    from align.envs.math_tools import MathToolEnv, _strip_tool_calls
    from align.envs.tools import parse_tool_calls
    from align.rewards.math import extract_boxed

    class StopWithoutToolCall(MathToolEnv):
        def step(self, action: str):
            if extract_boxed(_strip_tool_calls(action)) is None and not parse_tool_calls(action):
                if self.row_index is None or self.done:
                    raise RuntimeError("call reset() before step() (and after an episode ends)")
                self.turns += 1
                return self._finish(action)
            return super().step(action)

    return StopWithoutToolCall(**kwargs)


def run_trl(args: argparse.Namespace, out: Path) -> dict:
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from align.data import load_math_dataset
    from align.envs.math_tools import SYSTEM_PROMPT
    from align.envs.tools import calculate
    from align.models import load_causal_lm
    from align.rewards import math_reward

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            now = time.perf_counter()
            self.times.append(now - self.t)
            self.t = now

    episodes: list[dict] = []

    def final_answer_reward(prompts, completions, answer, **kwargs):
        # The verifier on the episode's last assistant message (the env's `_finish`); records turns.
        scores = []
        for completion, gold in zip(completions, answer):
            turns = sum(1 for m in completion if m.get("role") == "assistant")
            calls = sum(len(m.get("tool_calls") or []) for m in completion if m.get("role") == "assistant")
            score = math_reward.score(_last_assistant(completion), answer=gold)
            score = float(score) if score is not None else 0.0
            episodes.append({"turns": turns, "tool_calls": calls, "return": score})
            scores.append(score)
        return scores

    ds = load_math_dataset(None, "train")

    def to_prompt(row):
        problem = str(row.get("problem") or row.get("question") or "").strip()
        return {
            "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem}]
        }

    ds = ds.map(to_prompt).select_columns(["prompt", "answer"])
    tok = _tokenizer(args)
    model = load_causal_lm(None, dtype="float32")
    cfg = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_tool_calling_iterations=args.max_turns - 1,
        beta=args.beta,
        learning_rate=args.lr,
        max_steps=args.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        temperature=1.0,
        disable_tqdm=True,
    )
    timer = Timer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[final_answer_reward],
        args=cfg,
        train_dataset=ds,
        processing_class=tok,
        tools=[calculate],
        callbacks=[timer],
    )
    timer.t = time.perf_counter()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    per_step = [episodes[i * args.batch : (i + 1) * args.batch] for i in range(len(logs))]
    return {
        "step_seconds": timer.times,
        "sampled_tokens": [h["completions/mean_length"] * args.batch for h in logs],
        "episodes": [len(s) for s in per_step],
        "turns": [sum(e["turns"] for e in s) for s in per_step],
        "tool_calls": [sum(e["tool_calls"] for e in s) for s in per_step],
        "returns": [sum(e["return"] for e in s) for s in per_step],
    }


def run_align(args: argparse.Namespace, out: Path) -> dict:
    from align.config import parse_config
    from align.models import load_causal_lm
    from align.trainer import read_metrics
    from align.trainers.grpo import GRPOConfig, GRPOTrainer

    register_stop_env(args.max_turns)
    b = str(args.max_completion_length)
    cfg = parse_config(
        GRPOConfig,
        [
            "--output_dir", str(out), "--per_device_train_batch_size", str(args.batch),
            "--num_generations", str(args.num_generations), "--env_id", BENCH_ENV_ID,
            "--max_turns", str(args.max_turns), "--max_new_tokens", b, "--max_episode_tokens", b,
            "--beta", str(args.beta), "--learning_rate", str(args.lr), "--max_steps", str(args.steps),
            "--seed", str(args.seed), "--disable_progress_bar", "true", "--dtype", "float32",
            "--log_completions", "0", "--temperature", "1.0",
        ],
    )  # fmt: skip
    tok = _tokenizer(args)
    model = load_causal_lm(None, dtype="float32")
    trainer = GRPOTrainer(cfg, model, tok, [], None)
    trainer.train()
    rows = read_metrics(out)
    n = args.batch
    return {
        "step_seconds": [r["time/step_seconds"] for r in rows],
        "sampled_tokens": [r["completions/tokens"] for r in rows],
        "episodes": [n for _ in rows],
        "turns": [r.get("env/turns", float("nan")) * n for r in rows],
        "tool_calls": [r.get("env/tool_calls", 0.0) * n for r in rows],
        "returns": [r.get("env/return", float("nan")) * n for r in rows],
    }


def _worker(which: str, args: argparse.Namespace) -> None:
    import tempfile

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(tempfile.mkdtemp(prefix=f"bench_mt_{which}_"))
    t0 = time.perf_counter()
    res = (run_trl if which == "trl" else run_align)(args, out / "run")
    res["total_seconds"] = time.perf_counter() - t0
    res["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print("RESULT " + json.dumps(res))


def summarise(res: dict) -> dict:
    """Per-second rates over the steps after the first (warm-up); means per episode over all steps."""
    skip = 1 if len(res["step_seconds"]) > 1 else 0
    seconds = sum(res["step_seconds"][skip:])
    n_ep = sum(res["episodes"])
    return {
        "episodes_per_sec": sum(res["episodes"][skip:]) / seconds,
        "tokens_per_sec": sum(res["sampled_tokens"][skip:]) / seconds,
        "sec_per_step": seconds / len(res["step_seconds"][skip:]),
        "peak_rss_gb": res["peak_rss_gb"],
        "turns_per_episode": sum(res["turns"]) / max(n_ep, 1),
        "tokens_per_episode": sum(res["sampled_tokens"]) / max(n_ep, 1),
        "tool_calls_per_episode": sum(res["tool_calls"]) / max(n_ep, 1),
        "mean_return": sum(res["returns"]) / max(n_ep, 1),
        "total_seconds": res["total_seconds"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=8, help="episodes per step (problems x num_generations)")
    p.add_argument("--num_generations", type=int, default=4)
    p.add_argument("--max_turns", type=int, default=3, help="most assistant messages per episode")
    p.add_argument("--max_completion_length", type=int, default=48, help="most tokens after the first prompt")
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--template", choices=["qwen2_5", "own"], default="qwen2_5", help="chat template")
    p.add_argument("--threads", type=int, default=0, help="torch threads per run (0 = torch's default)")
    p.add_argument("--only", choices=["trl", "align"], default=None, help="run one side only")
    p.add_argument("--_worker", choices=["trl", "align"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        _worker(args._worker, args)
        return

    import trl

    print(f"TRL {trl.__version__}; settings: {json.dumps(_common(args))}")
    results = {}
    for which in [args.only] if args.only else ["trl", "align"]:
        cmd = [sys.executable, __file__, "--_worker", which] + [
            f"--{k}={v}" for k, v in vars(args).items() if k not in ("only", "_worker") and v is not None
        ]
        env = {
            **os.environ,
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT),
            "TRL_EXPERIMENTAL_SILENCE": "1",
        }
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            sys.exit(f"{which} run failed (exit {proc.returncode})")
        results[which] = summarise(json.loads(line[len("RESULT ") :]))
        print(f"{which:>6}: {json.dumps({k: round(v, 3) for k, v in results[which].items()})}")
    if len(results) == 2:
        a, t = results["align"], results["trl"]
        print(
            f"ratio align/TRL: episodes/s {a['episodes_per_sec'] / t['episodes_per_sec']:.2f}x, "
            f"sampled tokens/s {a['tokens_per_sec'] / t['tokens_per_sec']:.2f}x, "
            f"peak memory {a['peak_rss_gb'] / t['peak_rss_gb']:.2f}x"
        )


if __name__ == "__main__":
    main()
