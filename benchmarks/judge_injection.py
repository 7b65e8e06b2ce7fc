"""How far text planted in a completion moves the rubric judge: the embedded judge, defences off vs on.

    python benchmarks/judge_injection.py                        # both modes, defences off and on
    python benchmarks/judge_injection.py --modes logprob --configs off datamark restate phrasings on
    python benchmarks/judge_injection.py --questions 2 --attacks demand_up/suffix planted_answer/suffix

The battery (align/rewards/judge_battery.py): correct, wrong and gibberish answers to a few arithmetic
questions, each clean and with every attack as a suffix and as a prefix. For each attack and quality it prints
the mean and the worst (largest upward) shift of the score on [0, 1] against the clean completion: `judge`
is the judge's own score, `final` the reward after the detector's penalty. Configs: `off` (the judge prompt
before the defences), `on` (the rubric defaults: all defences and the detector), or one defence alone on top
of `off` (`datamark`, `restate`, `phrasings`, `force_prefix`), to measure what each one adds.
"""

from __future__ import annotations

import argparse
import math
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

SINGLE = {"datamark": {"datamark": True}, "restate": {"restate": True}, "phrasings": {"phrasings": 2}}
SINGLE["force_prefix"] = {"force_prefix": True}


def _config(name: str):
    return {"off": False, "on": True}.get(name, SINGLE.get(name))


def _fmt(pair) -> str:
    return "    n/a     " if pair is None else f"{pair[0]:+.3f}/{pair[1]:+.3f}"


def print_table(title: str, tables: dict[str, dict], qualities) -> None:
    """One line per attack: for each config, 'mean/worst' per quality."""
    configs = list(tables)
    print(f"\n## {title}  (shift on [0, 1]: mean/worst per quality)")
    head = "".join(f" | {c}:{q[:4]:<8}" for c in configs for q in qualities)
    print(f"{'attack':<24}{head}")
    attacks = sorted({a for t in tables.values() for a in t})
    for attack in attacks:
        cells = "".join(
            f" | {_fmt(tables[c].get(attack, {}).get(q)):<13}" for c in configs for q in qualities
        )
        print(f"{attack:<24}{cells}")


def summary(name: str, result, table, qualities) -> str:
    clean = result.clean_means("final")
    rises = [table[a][q][0] for a in table for q in qualities if q != "correct" and q in table[a]]
    worst = max(rises) if rises else math.nan
    flagged = sum(f for r, f in zip(result.rows, result.flagged) if r[0] != "clean")
    fp = sum(f for r, f in zip(result.rows, result.flagged) if r[0] == "clean")
    means = ", ".join(f"{q} {clean[q]:.3f}" for q in qualities if q in clean)
    return (
        f"{name}: clean means {means}; largest mean rise of wrong/gibberish {worst:+.3f}; "
        f"attacked flagged {flagged}/{sum(r[0] != 'clean' for r in result.rows)}, clean flagged {fp}"
    )


def main() -> None:
    from align.rewards.judge_battery import ATTACKS, QUALITIES, battery_rubric, run_battery, shift_table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modes", nargs="+", default=["logprob", "generate"], choices=["logprob", "generate"]
    )
    parser.add_argument("--configs", nargs="+", default=["off", "on"], choices=["off", "on", *SINGLE])
    parser.add_argument("--questions", type=int, default=None, help="the first N questions (default all)")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--batch_size", type=int, default=8)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from align.models import load_causal_lm, load_tokenizer
    from align.rewards import make_rubric_reward
    from align.rewards.rubric import HFJudge

    judge = HFJudge(load_causal_lm(), load_tokenizer(), batch_size=args.batch_size, max_new_tokens=6)
    for mode in args.modes:
        tables, lines = {}, []
        for config in args.configs:
            start = time.perf_counter()
            reward = make_rubric_reward(battery_rubric(mode, _config(config)), judge=judge)
            result = run_battery(reward, args.attacks, args.questions)
            unparsable = reward.pop_stats().get("reward/battery/judge_unparsable", 0.0)
            for which in ("judge", "final") if config == "on" else ("judge",):
                tables[f"{config}-{which}" if config == "on" else config] = shift_table(result, which)
            lines.append(
                summary(config, result, tables[f"{config}-final" if config == "on" else config], QUALITIES)
                + f"; unparsable {unparsable:.0f}; {time.perf_counter() - start:.0f}s"
            )
            print(f"[{mode}] {lines[-1]}", flush=True)
        print_table(f"judge_mode {mode}", tables, QUALITIES)
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
