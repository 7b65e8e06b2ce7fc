"""lm-evaluation-harness and align side by side: ARC log-likelihood multiple choice, same model, same rows.

    python benchmarks/eval_vs_lm_eval.py                              # 300 rows (150 easy + 150 challenge)
    python benchmarks/eval_vs_lm_eval.py --rows 40 --threads 1        # a quick check
    python benchmarks/eval_vs_lm_eval.py --rows 1000 --batch_size 64 --threads 2 --repeats 2
    python benchmarks/eval_vs_lm_eval.py --data arc_easy=ARC-Easy-test.jsonl arc_challenge=ARC-Challenge-test.jsonl

The rows are SYNTHETIC. The project ships no ARC data and the benchmark machine has no network, so this
script writes a few hundred questions in the exact `allenai/ai2_arc` schema (id, question,
choices {text, label}, answerKey) from templates: mostly "Which of these is a <category>?" with options
drawn from word lists (mammals, metals, simple machines, ...) and a bank of grade-school science facts,
plus some arithmetic, unit conversions and comparisons; 3 to 5 options, no (question, options) twice,
about a quarter of them labelled "1".."5" instead of "A".."E". They are not ARC and their accuracies say nothing about ARC; what is compared is the *scoring
code*: both tools must compute the same log-likelihoods and so the same `acc` and `acc_norm`. With
`--data` the script reads local ARC-schema files instead (e.g. the real test sets saved from the hub).

lm-eval reads the rows through a custom task per subset, written next to them: `dataset_path: json` with
`data_files` pointing at the local JSONL, and the very doc_to_text / doc_to_target / doc_to_choice /
metrics of lm-eval's own `arc_easy.yaml` (`Question: {{question}}\\nAnswer:`, choices with a leading space
by the default target delimiter). It runs through its Python API:
`lm_eval.simple_evaluate(model="hf", model_args="pretrained=<embedded model dir>,dtype=float32", ...)`.
align runs `align.eval.evaluate_loglikelihood` on the same files with the embedded model in fp32.

Printed: both tools' acc / acc_norm per subset and their differences (pass: within 0.5 points), the
per-question agreement of the predictions and the largest log-likelihood difference, and wall times with
the speed ratio lm-eval / align (> 1: align is faster), both end to end (model loading, dataset and task
building included) and for the scoring alone (lm-eval's `HFLM.loglikelihood` against align's
`evaluate_loglikelihood`; at small sizes lm-eval's fixed start-up cost dominates the first), each as
wall and CPU seconds (on a shared machine compare CPU seconds, or run with the machine to itself). Both run in
this process, one after the other, with the same torch thread count; `--repeats` re-times each (the best
time is reported). Exit status 1 if an accuracy differs by more than 0.5 points.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SUBSETS = ("arc_easy", "arc_challenge")

# ----------------------------------------------------------------------------------------------------------
# Synthetic ARC-schema rows
# ----------------------------------------------------------------------------------------------------------

# fmt: off
FACTS = [
    ("Which gas do plants take in from the air to make their food?", "carbon dioxide", ["oxygen", "nitrogen", "helium", "hydrogen"]),
    ("Which planet is closest to the Sun?", "Mercury", ["Venus", "Mars", "Jupiter", "Neptune"]),
    ("What is the main source of energy for Earth's water cycle?", "the Sun", ["the Moon", "wind", "volcanoes", "the ocean floor"]),
    ("Which tool is used to measure temperature?", "a thermometer", ["a ruler", "a balance", "a stopwatch", "a magnet"]),
    ("Which state of matter has a definite shape?", "solid", ["liquid", "gas", "plasma", "vapor"]),
    ("What do we call an animal that eats only plants?", "a herbivore", ["a carnivore", "a predator", "a decomposer", "a scavenger"]),
    ("Which organ pumps blood through the human body?", "the heart", ["the lungs", "the stomach", "the brain", "the liver"]),
    ("What force pulls objects toward the center of Earth?", "gravity", ["friction", "magnetism", "buoyancy", "tension"]),
    ("Which of these is a renewable resource?", "wind", ["coal", "oil", "natural gas", "uranium"]),
    ("What part of a plant takes in water from the soil?", "the roots", ["the flowers", "the leaves", "the seeds", "the fruit"]),
    ("Which material is a good conductor of electricity?", "copper", ["rubber", "wood", "glass", "plastic"]),
    ("What causes day and night on Earth?", "Earth spinning on its axis", ["Earth orbiting the Sun", "the Moon orbiting Earth", "clouds blocking the Sun", "the Sun moving around Earth"]),
    ("Which layer of Earth do we live on?", "the crust", ["the mantle", "the outer core", "the inner core", "the magma"]),
    ("What is formed when water vapor cools and turns into liquid?", "condensation", ["evaporation", "melting", "freezing", "erosion"]),
    ("Which animal is a mammal?", "a whale", ["a shark", "a trout", "a frog", "a lizard"]),
    ("Which body part helps a fish breathe in water?", "gills", ["lungs", "fins", "scales", "a tail"]),
    ("What is the boiling point of water at sea level in degrees Celsius?", "100", ["0", "50", "212", "32"]),
    ("Which of these is a simple machine?", "a lever", ["a battery", "a light bulb", "a magnet", "a thermometer"]),
    ("Which gas do humans breathe out as waste?", "carbon dioxide", ["oxygen", "helium", "neon", "argon"]),
    ("What is the largest planet in our solar system?", "Jupiter", ["Earth", "Mars", "Venus", "Mercury"]),
    ("Which process breaks rock into smaller pieces?", "weathering", ["photosynthesis", "condensation", "pollination", "digestion"]),
    ("What do bees carry from flower to flower?", "pollen", ["sand", "water", "seeds", "leaves"]),
    ("Which sense organ is used to hear?", "the ear", ["the eye", "the nose", "the tongue", "the skin"]),
    ("What kind of energy does a moving car have?", "kinetic energy", ["chemical energy", "nuclear energy", "sound energy", "potential energy"]),
    ("Which object is attracted to a magnet?", "an iron nail", ["a paper clip made of plastic", "a glass marble", "a wooden spoon", "a rubber band"]),
    ("Where does a baby frog, called a tadpole, live?", "in water", ["in a tree", "underground", "in a nest", "in the desert"]),
    ("What do plants release into the air during photosynthesis?", "oxygen", ["carbon dioxide", "nitrogen", "smoke", "methane"]),
    ("Which season comes after winter?", "spring", ["summer", "autumn", "fall", "winter"]),
    ("How many legs does an insect have?", "six", ["four", "eight", "ten", "two"]),
    ("What is frozen water called?", "ice", ["steam", "fog", "dew", "rain"]),
    ("Which part of the cell contains the genetic material?", "the nucleus", ["the cell wall", "the cytoplasm", "the membrane", "the vacuole"]),
    ("Which of these animals hibernates during the winter?", "a bear", ["a cow", "a horse", "a chicken", "a goat"]),
    ("What is the hardest natural material?", "diamond", ["quartz", "gold", "granite", "chalk"]),
    ("Why do we see lightning before we hear thunder?", "light travels faster than sound", ["sound travels faster than light", "thunder happens later", "our ears are slow", "clouds block sound"]),
    ("Which instrument is used to look at stars and planets?", "a telescope", ["a microscope", "a periscope", "a barometer", "a compass"]),
    ("What happens to most materials when they are heated?", "they expand", ["they shrink", "they become magnetic", "they lose mass", "they change color"]),
    ("Which planet is known as the Red Planet?", "Mars", ["Venus", "Saturn", "Uranus", "Mercury"]),
    ("What kind of rock is formed from cooled lava?", "igneous rock", ["sedimentary rock", "metamorphic rock", "limestone", "sandstone"]),
    ("Which human body system breaks down food?", "the digestive system", ["the nervous system", "the skeletal system", "the respiratory system", "the circulatory system"]),
    ("What is the main job of the roots of a tree?", "to hold the tree in the soil and take in water", ["to make seeds", "to catch sunlight", "to attract insects", "to store pollen"]),
    ("A student wants to find out which paper towel absorbs the most water. What should stay the same in each trial?", "the amount of water", ["the brand of paper towel", "the result", "the number of towels tested", "the color of the towel"]),
    ("Which change is a chemical change?", "wood burning", ["ice melting", "glass breaking", "paper folding", "water boiling"]),
    ("Which adaptation helps a cactus survive in the desert?", "a thick stem that stores water", ["large thin leaves", "shallow green flowers", "soft bark", "bright red fruit"]),
    ("Which of these is an example of a producer in a food chain?", "grass", ["a rabbit", "a hawk", "a mushroom", "a fox"]),
    ("The Moon shines at night because it", "reflects light from the Sun", ["makes its own light", "is very hot", "reflects light from Earth", "is made of ice"]),
    ("Which unit is used to measure the mass of an apple?", "grams", ["liters", "meters", "degrees", "seconds"]),
    ("What do we call the path a planet takes around the Sun?", "an orbit", ["an axis", "a rotation", "a season", "an eclipse"]),
    ("Which of these helps prevent soil erosion?", "planting trees", ["cutting down forests", "plowing on slopes", "removing grass", "building parking lots"]),
    ("Which form of energy is stored in food?", "chemical energy", ["light energy", "sound energy", "electrical energy", "magnetic energy"]),
    ("Sound travels fastest through which material?", "steel", ["air", "water", "a vacuum", "wool"]),
]
# fmt: on

# "Which of these is a <category>?": the gold from the category, distractors from the others.
CATEGORIES = {
    "mammal": [
        "a whale",
        "a bat",
        "a dolphin",
        "a horse",
        "a mouse",
        "an elephant",
        "a rabbit",
        "a tiger",
        "a cow",
        "a squirrel",
    ],
    "bird": [
        "a robin",
        "an eagle",
        "a penguin",
        "a sparrow",
        "an owl",
        "a parrot",
        "a duck",
        "a hawk",
        "a crow",
        "an ostrich",
    ],
    "insect": [
        "an ant",
        "a bee",
        "a beetle",
        "a butterfly",
        "a grasshopper",
        "a mosquito",
        "a dragonfly",
        "a ladybug",
        "a moth",
        "a cricket",
    ],
    "fish": [
        "a trout",
        "a salmon",
        "a shark",
        "a goldfish",
        "a tuna",
        "a cod",
        "a catfish",
        "a guppy",
        "a minnow",
        "a carp",
    ],
    "reptile": [
        "a snake",
        "a lizard",
        "a turtle",
        "a crocodile",
        "an alligator",
        "a gecko",
        "an iguana",
        "a chameleon",
        "a tortoise",
        "a cobra",
    ],
    "metal": ["iron", "copper", "aluminum", "silver", "gold", "zinc", "tin", "nickel", "lead", "steel"],
    "source of light": [
        "the Sun",
        "a candle flame",
        "a light bulb",
        "a campfire",
        "a flashlight",
        "a lightning bolt",
        "a firefly",
        "a star",
    ],
    "renewable resource": [
        "wind",
        "sunlight",
        "trees",
        "flowing water",
        "geothermal heat",
        "ocean tides",
        "crops",
    ],
    "fossil fuel": ["coal", "oil", "natural gas", "petroleum", "gasoline"],
    "simple machine": ["a lever", "a pulley", "a ramp", "a wedge", "a screw", "a wheel and axle"],
    "tool for measuring": [
        "a ruler",
        "a thermometer",
        "a balance",
        "a stopwatch",
        "a measuring cup",
        "a spring scale",
        "a barometer",
    ],
    "good insulator of heat": ["wool", "foam", "rubber", "plastic", "wood", "cork", "a feather blanket"],
}

INTROS = [
    "",
    "A class is learning about the natural world.",
    "Ms. Lopez shows her students a set of pictures.",
    "During a field trip, a student writes a list in a notebook.",
    "A scientist sorts several things into groups.",
    "Students are making a poster for the school science fair.",
    "While reading a book about nature, a boy has a question.",
]

UNITS = [
    ("centimeters", "meter", 100),
    ("grams", "kilogram", 1000),
    ("minutes", "hour", 60),
    ("seconds", "minute", 60),
    ("millimeters", "centimeter", 10),
    ("hours", "day", 24),
]


def _distinct_numbers(rng: random.Random, gold: int, k: int) -> list[int]:
    out: set[int] = set()
    while len(out) < k:
        delta = rng.choice([-1, 1]) * rng.randint(1, max(3, abs(gold) // 3 + 2))
        if gold + delta != gold:
            out.add(gold + delta)
    return sorted(out)


def _question(rng: random.Random, hard: bool) -> tuple[str, str, list[str]]:
    # Mostly worded answers, as in ARC; numbers (which SmolLM2 tokenizes digit by digit) now and then.
    kind = rng.choice(
        ["fact"] * 2
        + ["category"] * 5
        + ["add", "mul", "unit", "compare"]
        + (["two_step"] * 2 if hard else [])
    )
    if kind == "category":
        category = rng.choice(sorted(CATEGORIES))
        others = [m for c, members in CATEGORIES.items() if c != category for m in members]
        intro = rng.choice(INTROS)
        question = f"{intro} Which of these is {'an' if category[0] in 'aeiou' else 'a'} {category}?".strip()
        return question, rng.choice(CATEGORIES[category]), rng.sample(others, 4)
    if kind == "fact":
        q, gold, wrong = rng.choice(FACTS)
        return q, gold, rng.sample(wrong, len(wrong))
    if kind == "add":
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        return f"What is {a} + {b}?", str(a + b), [str(x) for x in _distinct_numbers(rng, a + b, 4)]
    if kind == "mul":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} times {b}?", str(a * b), [str(x) for x in _distinct_numbers(rng, a * b, 4)]
    if kind == "unit":
        small, big, factor = rng.choice(UNITS)
        n = rng.randint(2, 9)
        return (
            f"How many {small} are in {n} {big}s?",
            f"{n * factor} {small}",
            [f"{x} {small}" for x in _distinct_numbers(rng, n * factor, 4)],
        )
    if kind == "compare":
        nums = rng.sample(range(10, 500), 5)
        gold = max(nums)
        return "Which number is the greatest?", str(gold), [str(x) for x in nums if x != gold]
    # two_step
    a, b, c = rng.randint(3, 20), rng.randint(2, 9), rng.randint(1, 30)
    q = f"A box holds {a} rows of {b} eggs, and {c} eggs are taken out. How many eggs are left in the box?"
    gold = a * b - c
    return q, str(gold), [str(x) for x in _distinct_numbers(rng, gold, 4)]


def synthetic_arc_rows(n: int, *, hard: bool, seed: int, prefix: str) -> list[dict]:
    """`n` ARC-schema rows (synthetic, see the module docstring), deterministic in `seed`."""
    rng = random.Random(seed)
    rows = []
    seen: set[tuple] = set()  # no repeated (question, options): lm-eval would score a repeat only once
    i = 0
    while len(rows) < n:
        question, gold, wrong = _question(rng, hard)
        k = rng.choices([3, 4, 5], weights=[1, 6, 1])[0]
        options = [gold, *wrong[: k - 1]]
        key = (question, *sorted(options))
        if key in seen:
            continue
        seen.add(key)
        rng.shuffle(options)
        labels = ["1", "2", "3", "4", "5"][:k] if rng.random() < 0.25 else list("ABCDE")[:k]
        i += 1
        rows.append(
            {
                "id": f"{prefix}_{i:05d}",
                "question": question,
                "choices": {"text": options, "label": labels},
                "answerKey": labels[options.index(gold)],
            }
        )
    return rows


# Mirrors lm_eval/tasks/arc/arc_easy.yaml (0.4.13): only the dataset source differs.
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
should_decontaminate: true
doc_to_decontamination_query: "Question: {{{{question}}}}\\nAnswer:"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_data(folder: Path, rows_per_subset: dict[str, int], seed: int) -> dict[str, Path]:
    paths = {}
    for i, (subset, n) in enumerate(rows_per_subset.items()):
        rows = synthetic_arc_rows(
            n, hard=subset == "arc_challenge", seed=seed + i, prefix=f"Synthetic_{subset}"
        )
        path = folder / f"{subset}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"local_{subset}.yaml").write_text(TASK_YAML.format(task=f"local_{subset}", path=path))
        paths[subset] = path
    return paths


# ----------------------------------------------------------------------------------------------------------
# The two runs
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clock:
    """Wall and CPU (process) seconds. CPU time is what to compare on a shared machine: the wall time of
    a single-threaded run there depends on what else runs."""

    wall: float
    cpu: float

    @staticmethod
    def now() -> Clock:
        return Clock(time.perf_counter(), time.process_time())

    def __add__(self, other: Clock) -> Clock:
        return Clock(self.wall + other.wall, self.cpu + other.cpu)

    def __sub__(self, other: Clock) -> Clock:
        return Clock(self.wall - other.wall, self.cpu - other.cpu)


def run_lm_eval(
    model_dir: str, folder: Path, subsets: list[str], batch_size: int
) -> tuple[dict, Clock, Clock]:
    """lm-eval's results, its total time, and the time spent in `HFLM.loglikelihood` (the scoring)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    scoring = [Clock(0.0, 0.0)]
    original = HFLM.loglikelihood

    def timed(self, *args, **kwargs):
        t = Clock.now()
        try:
            return original(self, *args, **kwargs)
        finally:
            scoring[0] = scoring[0] + Clock.now() - t

    HFLM.loglikelihood = timed
    start = Clock.now()
    try:
        out = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={model_dir},dtype=float32",
            tasks=[f"local_{s}" for s in subsets],
            task_manager=TaskManager(include_path=str(folder)),
            batch_size=batch_size,
            device="cpu",
            log_samples=True,
            bootstrap_iters=0,
        )
    finally:
        HFLM.loglikelihood = original
    seconds = Clock.now() - start
    results = {}
    for s in subsets:
        r = out["results"][f"local_{s}"]
        samples = sorted(out["samples"][f"local_{s}"], key=lambda d: d["doc_id"])
        lls = [[float(resp[0]) for resp in d["filtered_resps"]] for d in samples]
        results[s] = {"acc": r["acc,none"], "acc_norm": r["acc_norm,none"], "lls": lls}
    return results, seconds, scoring[0]


def run_align(
    model_dir: str, paths: dict[str, Path], subsets: list[str], batch_size: int
) -> tuple[dict, Clock, Clock]:
    """align's results, its total time, and the time spent in `evaluate_loglikelihood` (the scoring)."""
    from align.eval import evaluate_loglikelihood, get_task, load_eval_model

    start = Clock.now()
    model, tokenizer = load_eval_model(model_dir, dtype="float32")
    results = {}
    scoring = Clock(0.0, 0.0)
    for s in subsets:
        task = get_task(s)
        rows = task.load(paths[s])
        t = Clock.now()
        r = evaluate_loglikelihood(task, rows, model, tokenizer, batch_size=batch_size, progress=False)
        scoring = scoring + Clock.now() - t
        results[s] = {
            "acc": r.summary["acc"],
            "acc_norm": r.summary["acc_norm"],
            "lls": [rec["loglikelihoods"] for rec in r.samples],
        }
    return results, Clock.now() - start, scoring


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=300, help="synthetic rows in all, split evenly over the subsets"
    )
    parser.add_argument("--subsets", nargs="+", default=list(SUBSETS), choices=SUBSETS)
    parser.add_argument(
        "--batch_size", type=int, default=64, help="(question, choice) pairs per forward, both tools"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="time each tool this many times; report the best"
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--data_dir", default=None, help="write the synthetic rows and task YAMLs here (default: a temp dir)"
    )
    parser.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="SUBSET=PATH",
        help="use these local ARC-schema JSONL files (e.g. the real ARC test sets) instead of synthetic rows",
    )
    parser.add_argument("--tolerance", type=float, default=0.5, help="allowed |acc difference| in points")
    args = parser.parse_args(argv)

    import torch

    from align.models import embedded_model_dir

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = str(embedded_model_dir())
    folder = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="align_arc_synthetic_"))
    folder.mkdir(parents=True, exist_ok=True)
    if args.data:
        given = dict(item.split("=", 1) for item in args.data)
        args.subsets = [s for s in args.subsets if s in given]
        paths = {s: Path(given[s]).resolve() for s in args.subsets}
        for s, path in paths.items():
            (folder / f"local_{s}.yaml").write_text(TASK_YAML.format(task=f"local_{s}", path=path))
        print(f"local ARC-schema files: { {s: str(p) for s, p in paths.items()} }")
    else:
        per = {s: max(1, args.rows // len(args.subsets)) for s in args.subsets}
        paths = write_data(folder, per, args.seed)
        print(f"synthetic ARC-schema rows (not ARC): {per} in {folder}")
    print(f"model: embedded SmolLM2-135M-Instruct fp32 ({model_dir}); batch_size {args.batch_size}; "
          f"torch threads {torch.get_num_threads()}")  # fmt: skip

    lm_times, align_times = [], []
    lm_res = al_res = None
    for _ in range(args.repeats):
        lm_res, total, scoring = run_lm_eval(model_dir, folder, args.subsets, args.batch_size)
        lm_times.append((total, scoring))
        al_res, total, scoring = run_align(model_dir, paths, args.subsets, args.batch_size)
        align_times.append((total, scoring))

    ok = True
    print(f"\n{'subset':<14} {'metric':<9} {'lm-eval':>8} {'align':>8} {'diff (pts)':>10}")
    for s in args.subsets:
        for metric in ("acc", "acc_norm"):
            a, b = lm_res[s][metric], al_res[s][metric]
            diff = 100 * (b - a)
            ok &= abs(diff) <= args.tolerance
            print(f"{s:<14} {metric:<9} {100 * a:>8.2f} {100 * b:>8.2f} {diff:>+10.2f}")
    for s in args.subsets:
        lm_lls, al_lls = lm_res[s]["lls"], al_res[s]["lls"]
        max_diff = max(abs(x - y) for p, q in zip(lm_lls, al_lls) for x, y in zip(p, q))
        same = sum(
            max(range(len(p)), key=p.__getitem__) == max(range(len(q)), key=q.__getitem__)
            for p, q in zip(lm_lls, al_lls)
        )
        print(
            f"{s}: same acc prediction on {same}/{len(lm_lls)} questions; max |log-likelihood diff| {max_diff:.2e}"
        )
    lm_total = min((t for t, _ in lm_times), key=lambda c: c.wall)
    al_total = min((t for t, _ in align_times), key=lambda c: c.wall)
    lm_score = min((t for _, t in lm_times), key=lambda c: c.wall)
    al_score = min((t for _, t in align_times), key=lambda c: c.wall)
    print()
    for label, lm, al in (
        ("end to end (model load, data and task building included)", lm_total, al_total),
        ("scoring only (HFLM.loglikelihood vs evaluate_loglikelihood)", lm_score, al_score),
    ):
        print(f"{label}:")
        print(
            f"  wall {lm.wall:7.1f} s lm-eval, {al.wall:7.1f} s align: speed ratio lm-eval / align {lm.wall / al.wall:.2f}x"
        )
        print(
            f"  cpu  {lm.cpu:7.1f} s lm-eval, {al.cpu:7.1f} s align: speed ratio lm-eval / align {lm.cpu / al.cpu:.2f}x"
        )
    print("(> 1: align is faster)")
    print("agreement within {:.1f} points: {}".format(args.tolerance, "PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
