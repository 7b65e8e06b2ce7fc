r"""Generate the project's instruction (SFT) and preference data, where "better" is a checkable property.

    python data/make_prefs.py                 # seed 0: data/sft/{train,test}.jsonl, data/prefs/{train,test}.jsonl
    python data/make_prefs.py --seed 1 --train 300 --test 40 --out /tmp/d

Four kinds of instruction, each with a property that a short function decides (:func:`check`):

    kind        prompt (user turn)                                       property of a good answer
    math        "What is 23 + 48? Put the final answer in \boxed{}."    \boxed{} holds the right number
    uppercase   "Name three fruits. Reply in capital letters only."      no lowercase letter
    word_limit  "Describe the sun in at most 6 words."                   at most 6 words
    json        'Reply with a JSON object with keys "name" and "age":    parses as that exact object
                 Mia is 12 years old.'

``sft/*.jsonl``: ``messages`` (a user turn and a good assistant answer; about one row in seven is a
two-exchange conversation), ``kind``. ``prefs/*.jsonl``: ``prompt`` (the user turn as messages),
``chosen`` and ``rejected`` (one assistant message each), ``kind``, ``answer`` and ``failure``. The chosen
answer has the property and the rejected one does not, by a named ``failure``: a wrong number or a missing
``\boxed{}`` (math), ordinary capitalisation (uppercase), a long-winded answer (word_limit), prose instead
of JSON or a missing key (json). ``answer`` is what :func:`check` needs: the number (math), the word limit
(word_limit), the expected JSON (json), empty (uppercase).

The test split is drawn first and no training prompt repeats a test prompt, so the splits are disjoint;
SFT and preference data use different prompts too. One ``random.Random(seed)``, standard library only:
the same arguments write byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

KINDS = ("math", "uppercase", "word_limit", "json")
KIND_WEIGHTS = (0.4, 0.2, 0.2, 0.2)

NAMES = [
    "Sam",
    "Mia",
    "Leo",
    "Ava",
    "Noah",
    "Lena",
    "Omar",
    "Zoe",
    "Ravi",
    "Ines",
    "Tom",
    "Yuki",
    "Ben",
    "Sara",
]
CATEGORIES = {
    "fruits": ["apple", "pear", "plum", "banana", "cherry", "mango", "grape", "lemon", "peach", "kiwi"],
    "colors": ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown"],
    "animals": ["dog", "cat", "horse", "rabbit", "lion", "tiger", "bear", "mouse", "goat", "sheep"],
    "countries": [
        "France",
        "Japan",
        "Brazil",
        "Kenya",
        "Canada",
        "India",
        "Spain",
        "Peru",
        "Norway",
        "Egypt",
    ],
    "vegetables": ["carrot", "onion", "potato", "pepper", "cabbage", "leek", "pea", "bean", "corn", "radish"],
    "instruments": [
        "piano",
        "guitar",
        "violin",
        "drum",
        "flute",
        "trumpet",
        "harp",
        "cello",
        "oboe",
        "banjo",
    ],
}
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
THINGS = {
    "the sun": ("hot", "bright", "a star at the center of our solar system that gives us light and warmth"),
    "the sea": ("deep", "salty", "a huge body of water that covers most of the surface of our planet"),
    "a forest": ("green", "quiet", "a large area full of trees, plants and many kinds of animals"),
    "winter": ("cold", "dark", "the coldest season of the year, when days are short and nights are long"),
    "a desert": ("dry", "hot", "a large dry region where very little rain falls during the whole year"),
    "the moon": ("pale", "round", "the natural satellite that moves around the Earth about once a month"),
    "a city": ("busy", "loud", "a large town where many people live, work and travel every single day"),
    "a mountain": (
        "high",
        "steep",
        "a large natural rise of the land that reaches far above its surroundings",
    ),
    "rain": ("wet", "cool", "water that falls from the clouds in drops and helps plants to grow"),
    "a garden": ("green", "calm", "a piece of land where people grow flowers, fruit and vegetables"),
    "snow": ("white", "cold", "frozen water that falls from the sky in soft flakes when it is cold"),
    "the wind": ("strong", "fresh", "moving air that you can feel on your face but cannot see at all"),
    "a river": ("long", "fast", "a large stream of water that flows across the land towards the sea"),
    "a library": ("quiet", "calm", "a building full of books that people can read or borrow for free"),
    "coffee": ("hot", "bitter", "a dark drink made from roasted beans that many people enjoy each morning"),
    "a cat": ("soft", "curious", "a small furry animal that many people keep at home as a pet"),
    "a dog": (
        "loyal",
        "playful",
        "a friendly animal that has lived and worked with people for thousands of years",
    ),
    "the night": (
        "dark",
        "still",
        "the time between evening and morning when the sky is dark and most people sleep",
    ),
    "bread": ("warm", "soft", "a food made from flour, water and yeast that is baked in an oven"),
    "a train": ("long", "fast", "a line of wagons pulled along a railway to carry people or goods"),
    "spring": ("mild", "fresh", "the season after winter when plants start to grow and flowers bloom again"),
    "a beach": ("sandy", "sunny", "a strip of sand or small stones along the edge of the sea or a lake"),
    "fire": ("hot", "bright", "the light and heat that come from something that is burning"),
    "an island": ("small", "remote", "a piece of land that is surrounded by water on every side"),
    "a storm": ("loud", "wild", "a period of very bad weather with strong winds and often heavy rain"),
    "a lake": ("calm", "clear", "a large area of water that is surrounded by land on all sides"),
    "tea": ("warm", "mild", "a drink made by pouring hot water over the dried leaves of a plant"),
    "a bridge": ("long", "solid", "a structure built over a river or road so that people can cross it"),
    "autumn": ("cool", "golden", "the season after summer when the leaves of many trees turn brown and fall"),
    "a clock": ("small", "precise", "a device that shows the time of day with hands or with numbers"),
}


def _math(rng: random.Random) -> tuple[str, dict]:
    op = rng.choice(["+", "-", "*"])
    if op == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        value, shown = a * b, f"{a} \\times {b}"
    else:
        a, b = rng.randint(1, 60), rng.randint(1, 40)
        if op == "-":
            a, b = max(a, b), min(a, b)
        value, shown = (a + b if op == "+" else a - b), f"{a} {op} {b}"
    prompt = f"What is {shown}? Put the final answer in \\boxed{{}}."
    good = f"{shown} = {value}. The answer is \\boxed{{{value}}}."
    if rng.random() < 0.5:
        wrong = value + rng.choice([-10, -2, -1, 1, 2, 10])
        bad, failure = f"{shown} = {wrong}. The answer is \\boxed{{{wrong}}}.", "wrong_answer"
    else:
        bad, failure = f"{shown} = {value}. The answer is {value}.", "no_boxed"
    return prompt, {"good": good, "bad": bad, "failure": failure, "answer": str(value)}


def _uppercase(rng: random.Random) -> tuple[str, dict]:
    category = rng.choice(sorted(CATEGORIES))
    k = rng.choice(sorted(COUNT_WORDS))
    items = rng.sample(CATEGORIES[category], k)
    listed = ", ".join(items)
    prompt = rng.choice(
        [
            f"Write these {category} in capital letters only: {listed}.",
            f"Repeat this list of {category} in capital letters only: {listed}.",
            f"Name {COUNT_WORDS[k]} {category}, using capital letters only. For example: {listed}.",
        ]
    )
    good = listed.upper() + "."
    bad = listed[0].upper() + listed[1:] + "."
    return prompt, {"good": good, "bad": bad, "failure": "not_uppercase", "answer": ""}


def _word_limit(rng: random.Random) -> tuple[str, dict]:
    thing = rng.choice(sorted(THINGS))
    adj1, adj2, fact = THINGS[thing]
    if rng.random() < 0.5:
        adj1, adj2 = adj2, adj1
    limit = rng.choice([6, 7, 8, 9, 10])
    subject = thing[0].upper() + thing[1:]
    good = f"{subject} is {adj1} and {adj2}."
    prompt = rng.choice(
        [
            f"Describe {thing} in at most {limit} words.",
            f"In no more than {limit} words, describe {thing}.",
            f"Tell me about {thing} in {limit} words or fewer.",
            f"Say something about {thing} using at most {limit} words.",
        ]
    )
    bad = f"{subject} is {adj1} and {adj2}. It is {fact}, and there is much more to say about it."
    assert _words(good) <= limit < _words(bad), (good, limit)
    return prompt, {"good": good, "bad": bad, "failure": "too_long", "answer": str(limit)}


def _json(rng: random.Random) -> tuple[str, dict]:
    name, age = rng.choice(NAMES), rng.randint(5, 80)
    prompt = f'Reply with a JSON object with keys "name" and "age": {name} is {age} years old.'
    good = json.dumps({"name": name, "age": age})
    if rng.random() < 0.5:
        bad, failure = f"{name} is {age} years old.", "not_json"
    else:
        bad, failure = json.dumps({"name": name}), "missing_key"
    return prompt, {"good": good, "bad": bad, "failure": failure, "answer": good}


MAKERS = {"math": _math, "uppercase": _uppercase, "word_limit": _word_limit, "json": _json}


def _words(text: str) -> int:
    return len(text.split())


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def check(kind: str, answer: str, text: str) -> bool:
    """Whether ``text`` (an assistant answer) has the property that ``kind`` asks for (module docstring)."""
    text = text.strip()
    if kind == "math":
        found = _BOXED.findall(text)
        return bool(found) and found[-1].strip() == answer
    if kind == "uppercase":
        return any(c.isalpha() for c in text) and not any(c.islower() for c in text)
    if kind == "word_limit":
        return 0 < _words(text) <= int(answer)
    if kind == "json":
        match = re.search(r"\{.*\}", text, re.S)
        try:
            return match is not None and json.loads(match.group(0)) == json.loads(answer)
        except json.JSONDecodeError:
            return False
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def _draw(rng: random.Random, used: set[str]) -> tuple[str, str, dict]:
    for _ in range(10_000):
        kind = rng.choices(KINDS, weights=KIND_WEIGHTS)[0]
        prompt, item = MAKERS[kind](rng)
        if prompt not in used:
            used.add(prompt)
            return kind, prompt, item
    raise RuntimeError("ran out of distinct prompts; ask for fewer rows")


def _pref_row(kind: str, prompt: str, item: dict) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": item["good"]}],
        "rejected": [{"role": "assistant", "content": item["bad"]}],
        "kind": kind,
        "answer": item["answer"],
        "failure": item["failure"],
    }


def _sft_row(rng: random.Random, used: set[str], kind: str, prompt: str, item: dict) -> dict:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": item["good"]}]
    if rng.random() < 1 / 7:  # a second exchange, so multi-turn masking is exercised
        _, prompt2, item2 = _draw(rng, used)
        messages += [{"role": "user", "content": prompt2}, {"role": "assistant", "content": item2["good"]}]
    return {"messages": messages, "kind": kind, "answer": item["answer"]}


def generate(seed: int = 0, train: int = 1000, test: int = 100) -> dict[str, list[dict]]:
    """``{"sft/train": rows, "sft/test": ..., "prefs/train": ..., "prefs/test": ...}``; test rows first."""
    rng = random.Random(seed)
    used: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split, n in (("test", test), ("train", train)):
        out[f"prefs/{split}"] = [_pref_row(*_draw(rng, used)) for _ in range(n)]
        out[f"sft/{split}"] = [_sft_row(rng, used, *_draw(rng, used)) for _ in range(n)]
    for rows in out.values():
        for row in rows:
            if "chosen" in row:
                good, bad = row["chosen"][0]["content"], row["rejected"][0]["content"]
                assert check(row["kind"], row["answer"], good) and not check(row["kind"], row["answer"], bad)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=1000, help="rows per training split (sft and prefs each)")
    p.add_argument("--test", type=int, default=100, help="rows per held-out split (sft and prefs each)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent), help="folder for sft/ and prefs/")
    args = p.parse_args(argv)
    data = generate(args.seed, args.train, args.test)
    for key, rows in data.items():
        path = Path(args.out) / f"{key}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"{path}: {len(rows)} rows")


if __name__ == "__main__":
    main()
