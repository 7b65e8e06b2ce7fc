"""`align eval ...`: parse an `EvalConfig` (YAML via --config, then flags) and run it.

align eval --task math500 --model PATH_OR_NAME [--adapter PATH] [--limit N] [--num_samples 8 --temperature 0.7]
align eval --task arc_easy arc_challenge --mode loglikelihood --data_path arc_easy=arc_easy.jsonl ...
align eval --help                      # every option, documented from EvalConfig's field docstrings
"""

from __future__ import annotations

import sys

from align.config import ConfigError, parse_config
from align.eval.runner import EvalConfig, run_eval


def main(argv: list[str] | None = None) -> int:
    """Entry point of `align eval` and `recipes/eval.py`; returns the exit status."""
    try:
        cfg = parse_config(EvalConfig, sys.argv[1:] if argv is None else argv)
    except ConfigError as e:
        print(f"align eval: {e}", file=sys.stderr)
        return 2
    try:
        run_eval(cfg)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"align eval: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
