"""Evaluate a model on MATH500, GSM8K and ARC with the same verifiers as the rewards.

With no arguments it evaluates the embedded SmolLM2-135M-Instruct on the project's own generated math
test set (task `math`, data/math/test.jsonl, offline):

    python recipes/eval.py
    python recipes/eval.py --config recipes/configs/eval/smollm2_cpu.yaml

Hub benchmarks, a fine-tuned model or a LoRA adapter on top of its base, several tasks in one call:

    python recipes/eval.py --task math500 arc_easy arc_challenge --model outputs/grpo/model
    python recipes/eval.py --task math500 --model Qwen/Qwen2.5-0.5B-Instruct --adapter outputs/grpo/model \\
        --num_samples 8 --temperature 0.7 --top_p 0.95 --max_new_tokens 2048
    python recipes/eval.py --config recipes/configs/eval/qwen2.5-0.5b-instruct.yaml
    python recipes/eval.py --task arc_easy --data_path arc_easy=path/to/ARC-Easy/test.jsonl --mode generate

`align eval ...` takes the same options. Outputs in output_dir: config.yaml, summary.json, report.md, and
per task samples.jsonl, summary.json, report.md (MATH500 by subject and level) and accuracy_by_level.png.
"""

from align.errors import run_main
from align.eval.cli import main

if __name__ == "__main__":
    run_main(main, "align eval")
