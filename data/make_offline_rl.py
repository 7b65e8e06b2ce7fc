r"""Generate the offline RL datasets of the Decision Transformer (align.rl.offline_data), D4RL-style.

    python data/make_offline_rl.py                       # CartPole-v1 and FrozenLake-v1, all five kinds, seed 0
    python data/make_offline_rl.py --env_id CartPole-v1 --kinds medium medium-replay --out /tmp/offline
    python data/make_offline_rl.py --format jsonl --steps 5000 --out /tmp/small
    python data/make_offline_rl.py --source ppo --kinds medium medium-replay   # from a trained PPO agent

Datasets are made at run time, not shipped: the recipes and tests call the same function
(``ensure_offline_dataset``) and cache the files under ``$ALIGN_CACHE_DIR/offline_rl`` (default
``~/.cache/align/offline_rl``; ``--out`` here). Each file is a function of (environment, kind, seed,
steps): the same command writes the same episodes. Only the return statistics are committed:
``data/offline_rl/stats.json`` (``--stats`` rewrites it).

Kinds (per environment, ``steps`` environment steps per part, whole episodes):

    random         uniform actions
    medium         the expert with each action uniformly random with probability eps (CartPole 0.5,
                   FrozenLake 0.15): a third to a half of the expert's return
    medium-replay  a "training run" from random to medium: eps falls linearly from 1 to the medium eps
    medium-expert  the medium part, then as many steps of the expert
    expert         the expert

Experts are the project's own: on CartPole-v1 a hand-written PD controller of the pole (return 500 from every
start tried; training a DQN or PPO agent would take minutes instead of milliseconds), on FrozenLake-v1 (4x4,
slippery) the greedy policy of value iteration on the exact model (success rate 0.74, the optimum).

``--source ppo`` (CartPole-v1 only, align.rl.offline_agents) makes them from the project's PPO instead:
trained once per seed (about 20 s, cached under the output folder's agents/), medium is a partly-trained
snapshot (mean return closest to 0.4 of the final policy's), expert the final policy, medium-replay the
run's own training episodes up to the medium snapshot; the file names carry ``_ppo``.

Each file is Parquet (or JSONL) with one row per episode: observations, actions, rewards, terminals,
timeouts, timesteps, policy; ``<name>.stats.json`` beside it holds its return statistics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from align.rl.offline_data import (
    DATA_SOURCES,
    dataset_file_name,
    dataset_summary_line,
    make_offline_dataset,
)
from align.rl.offline_dataset import (
    DATASET_KINDS,
    offline_data_dir,
    save_offline_dataset,
)

STATS_FILE = Path(__file__).parent / "offline_rl" / "stats.json"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--env_id",
        nargs="+",
        default=None,
        help="environments (default: CartPole-v1 and FrozenLake-v1; CartPole-v1 alone with --source ppo)",
    )
    p.add_argument(
        "--source",
        choices=DATA_SOURCES,
        default="controller",
        help="behaviour policies: the project's experts plus noise, or a trained PPO agent (CartPole-v1)",
    )
    p.add_argument(
        "--kinds", nargs="+", default=list(DATASET_KINDS), choices=DATASET_KINDS, help="dataset kinds"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the episodes and of the random actions")
    p.add_argument(
        "--steps", type=int, default=None, help="environment steps per part (default: per environment)"
    )
    p.add_argument("--out", default=None, help="output folder (default: $ALIGN_CACHE_DIR/offline_rl)")
    p.add_argument("--format", choices=["parquet", "jsonl"], default="parquet", help="file format")
    p.add_argument(
        "--stats",
        default=None,
        help=f"also write all return statistics to this JSON file (e.g. {STATS_FILE})",
    )
    args = p.parse_args(argv)
    out = offline_data_dir(args.out)
    envs = args.env_id or (["CartPole-v1"] if args.source == "ppo" else ["CartPole-v1", "FrozenLake-v1"])
    all_stats = {}
    for env_id in envs:
        for kind in args.kinds:
            t0 = time.perf_counter()
            ds = make_offline_dataset(
                env_id, kind, seed=args.seed, steps=args.steps, source=args.source, cache_dir=args.out
            )
            name = dataset_file_name(env_id, kind, args.seed, args.steps, args.source)
            if args.format == "jsonl":
                name = name.replace(".parquet", ".jsonl")
            path = save_offline_dataset(ds, out / name)
            stats = ds.stats()
            key = f"{env_id}/{kind}" if args.source == "controller" else f"{env_id}/{args.source}/{kind}"
            all_stats[key] = {"file": name, **stats}
            print(f"{dataset_summary_line(stats)} -> {path} ({time.perf_counter() - t0:.1f} s)")
    if args.stats:
        Path(args.stats).parent.mkdir(parents=True, exist_ok=True)
        Path(args.stats).write_text(json.dumps(all_stats, indent=2) + "\n")
    return all_stats


if __name__ == "__main__":
    main()
