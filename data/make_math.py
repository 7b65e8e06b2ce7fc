r"""Generate the project's small math datasets: arithmetic and short word problems with exact answers.

    python data/make_math.py                       # seed 0, 2000 train + 200 test rows, into data/math/
    python data/make_math.py --seed 1 --train 500 --test 50 --out /tmp/math

Rows follow the MATH-500 schema, so the same loader, prompts and reward serve both:

    problem     the question (inline LaTeX in $...$, as in MATH)
    solution    a short worked solution ending in $\boxed{answer}$
    answer      the final answer: an integer ("19") or a reduced fraction ("\frac{3}{4}")
    subject     "Arithmetic", "Fractions" or "Word Problems"
    level       1 (one step: add or subtract numbers of 1-2 digits, half of them up to 20), 2 (two steps, or multiply, divide,
                add fractions), 3 (short word problems, one or two steps)
    unique_id   "synthetic/<split>/<level>/<index>", stable for a given seed and sizes

Difficulty is aimed at a 135M-parameter instruct model (SmolLM2-135M-Instruct answers "12 + 7 = 9" when
greedy): it should get some right, not most. The mix is about 40% level 1, 35% level 2, 25% level 3.
The test problems are drawn first and the training problems never repeat a test problem (nor each
other), so the splits are disjoint. Everything comes from one `random.Random(seed)`: the same seed and
sizes give byte-identical files. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

LEVEL_WEIGHTS = {1: 0.40, 2: 0.35, 3: 0.25}

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


def fmt(x: Fraction | int) -> str:
    r"""An answer as MATH writes it: "19", "-3" or "\frac{3}{4}" (reduced; negative sign in front)."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return rf"{sign}\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def tex(x: Fraction | int) -> str:
    """A number inside $...$ in a problem or solution."""
    return fmt(x)


def solution(steps: list[str], answer: Fraction | int) -> str:
    return " ".join(steps) + rf" The answer is $\boxed{{{fmt(answer)}}}$."


# ---------------------------------------------------------------------------------------------------------
# Level 1: one addition or subtraction of numbers with 1-2 digits
# ---------------------------------------------------------------------------------------------------------


def level1(rng: random.Random) -> tuple[str, str, Fraction, str]:
    # Half the time small numbers (up to 20), which the 135M model sometimes gets right, else up to 99.
    top = 20 if rng.random() < 0.5 else 99
    a, b = rng.randint(1, top), rng.randint(1, top)
    if rng.random() < 0.5:
        ans = a + b
        expr = f"{a} + {b}"
    else:
        a, b = max(a, b), min(a, b)
        ans = a - b
        expr = f"{a} - {b}"
    problem = rng.choice(
        [f"What is ${expr}$?", f"Compute ${expr}$.", f"Calculate ${expr}$.", f"Find the value of ${expr}$."]
    )
    return problem, solution([f"${expr} = {ans}$."], ans), Fraction(ans), "Arithmetic"


# ---------------------------------------------------------------------------------------------------------
# Level 2: two steps, multiplication, exact division, fractions
# ---------------------------------------------------------------------------------------------------------


def _two_step(rng: random.Random):
    a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(1, 30)
    form = rng.randrange(3)
    if form == 0:
        first = a + b
        expr, ans = f"{a} + {b} - {c}", first - c
        steps = [f"First ${a} + {b} = {first}$.", f"Then ${first} - {c} = {ans}$."]
    elif form == 1:
        first = a + b
        expr, ans = f"{a} + {b} + {c}", first + c
        steps = [f"First ${a} + {b} = {first}$.", f"Then ${first} + {c} = {ans}$."]
    else:
        a, b = rng.randint(2, 12), rng.randint(2, 9)
        first = a * b
        expr, ans = rf"{a} \times {b} + {c}", first + c
        steps = [rf"First ${a} \times {b} = {first}$.", f"Then ${first} + {c} = {ans}$."]
    return f"What is ${expr}$?", solution(steps, ans), Fraction(ans), "Arithmetic"


def _multiply(rng: random.Random):
    a, b = rng.randint(2, 25), rng.randint(2, 9)
    ans = a * b
    expr = rf"{a} \times {b}"
    problem = rng.choice([f"What is ${expr}$?", f"Compute ${expr}$."])
    return problem, solution([f"${expr} = {ans}$."], ans), Fraction(ans), "Arithmetic"


def _divide(rng: random.Random):
    b, q = rng.randint(2, 9), rng.randint(2, 15)
    a = b * q
    expr = rf"{a} \div {b}"
    steps = [rf"Since ${b} \times {q} = {a}$, we get ${expr} = {q}$."]
    return f"What is ${expr}$?", solution(steps, q), Fraction(q), "Arithmetic"


def _fractions(rng: random.Random):
    form = rng.randrange(2)
    if form == 0:  # add two unit-ish fractions with small denominators
        d1, d2 = rng.choice([2, 3, 4, 5, 6, 8]), rng.choice([2, 3, 4, 5, 6, 8])
        n1, n2 = rng.randint(1, d1 - 1), rng.randint(1, d2 - 1)
        x, y = Fraction(n1, d1), Fraction(n2, d2)
        ans = x + y
        expr = rf"\frac{{{n1}}}{{{d1}}} + \frac{{{n2}}}{{{d2}}}"
        common = d1 * d2 // math.gcd(d1, d2)
        steps = [
            f"Over the common denominator ${common}$ this is "
            rf"$\frac{{{n1 * common // d1}}}{{{common}}} + \frac{{{n2 * common // d2}}}{{{common}}}"
            rf" = \frac{{{n1 * common // d1 + n2 * common // d2}}}{{{common}}}$,",
            f"which simplifies to ${tex(ans)}$." if ans.denominator != common else "already in lowest terms.",
        ]
        return f"What is ${expr}$? Give your answer in lowest terms.", solution(steps, ans), ans, "Fractions"
    # simplify a fraction
    d = rng.choice([3, 4, 5, 6, 7, 8, 9, 10])
    n = rng.randint(1, d - 1)
    k = rng.randint(2, 6)
    ans = Fraction(n, d)
    expr = rf"\frac{{{n * k}}}{{{d * k}}}"
    g = Fraction(n * k, d * k)
    steps = [
        f"Divide the numerator and the denominator by their greatest common divisor "
        f"${(n * k) // g.numerator}$: ${expr} = {tex(g)}$."
    ]
    return f"Simplify ${expr}$.", solution(steps, ans), ans, "Fractions"


def level2(rng: random.Random):
    kind = rng.choices([_two_step, _multiply, _divide, _fractions], weights=[4, 3, 2, 2])[0]
    return kind(rng)


# ---------------------------------------------------------------------------------------------------------
# Level 3: short word problems
# ---------------------------------------------------------------------------------------------------------


def _wp_more(rng):
    name, item = rng.choice(NAMES), rng.choice(["apples", "marbles", "stickers", "books", "stamps"])
    a, b = rng.randint(3, 60), rng.randint(2, 40)
    ans = a + b
    problem = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
    return problem, solution([f"{name} has ${a} + {b} = {ans}$ {item}."], ans), Fraction(ans)


def _wp_left(rng):
    name, item = rng.choice(NAMES), rng.choice(["cookies", "pencils", "cards", "balloons", "shells"])
    a = rng.randint(10, 90)
    b = rng.randint(2, a - 1)
    ans = a - b
    problem = f"{name} had {a} {item} and gave {b} of them away. How many {item} are left?"
    return problem, solution([f"${a} - {b} = {ans}$ {item} are left."], ans), Fraction(ans)


def _wp_groups(rng):
    container, containers, item = rng.choice(
        [
            ("box", "boxes", "eggs"),
            ("bag", "bags", "oranges"),
            ("pack", "packs", "pens"),
            ("shelf", "shelves", "books"),
        ]
    )
    per, n = rng.randint(3, 12), rng.randint(2, 9)
    ans = per * n
    problem = f"A {container} holds {per} {item}. How many {item} are in {n} such {containers}?"
    return problem, solution([rf"${n} \times {per} = {ans}$ {item}."], ans), Fraction(ans)


def _wp_share(rng):
    people, item = (
        rng.choice(["children", "friends", "students"]),
        rng.choice(["cookies", "candies", "cards"]),
    )
    n, each = rng.randint(2, 9), rng.randint(2, 12)
    total = n * each
    problem = f"{total} {item} are shared equally among {n} {people}. How many {item} does each get?"
    return problem, solution([rf"${total} \div {n} = {each}$ {item} each."], each), Fraction(each)


def article(n: int) -> str:
    """ "an" before numbers read with a vowel sound (8, 11, 18, 80-89), else "a"."""
    return "an" if str(n).startswith("8") or n in (11, 18) else "a"


def _wp_cost(rng):
    name, thing = rng.choice(NAMES), rng.choice(["pencil", "notebook", "ticket", "sandwich"])
    price, qty, extra = rng.randint(2, 9), rng.randint(2, 6), rng.randint(1, 15)
    subtotal = price * qty
    ans = subtotal + extra
    problem = (
        f"A {thing} costs {price} dollars. {name} buys {qty} of them and {article(extra)} {extra}-dollar bag. "
        f"How many dollars does {name} spend in all?"
    )
    steps = [
        rf"The {thing}s cost ${qty} \times {price} = {subtotal}$ dollars.",
        f"Then ${subtotal} + {extra} = {ans}$.",
    ]
    return problem, solution(steps, ans), Fraction(ans)


def _wp_speed(rng):
    speed, hours = rng.choice([5, 10, 12, 15, 20, 30, 40, 50, 60]), rng.randint(2, 6)
    ans = speed * hours
    vehicle = rng.choice(["A train", "A bus", "A cyclist", "A boat"])
    problem = f"{vehicle} travels {speed} km every hour. How many km does it travel in {hours} hours?"
    return problem, solution([rf"${speed} \times {hours} = {ans}$ km."], ans), Fraction(ans)


def _wp_days(rng):
    name = rng.choice(NAMES)
    per_day, days = rng.randint(3, 15), rng.randint(2, 9)
    total = per_day * days
    problem = f"{name} reads {per_day} pages a day. How many days does {name} need to read {total} pages?"
    return problem, solution([rf"${total} \div {per_day} = {days}$ days."], days), Fraction(days)


def _wp_fraction(rng):
    name = rng.choice(NAMES)
    slices = rng.choice([4, 6, 8, 10, 12])
    eaten = rng.randint(1, slices - 1)
    ans = Fraction(eaten, slices)
    problem = (
        f"A pizza is cut into {slices} equal slices and {name} eats {eaten} of them. "
        f"What fraction of the pizza does {name} eat? Give your answer in lowest terms."
    )
    steps = [
        rf"{name} eats $\frac{{{eaten}}}{{{slices}}}$ of the pizza, which is ${tex(ans)}$ in lowest terms."
    ]
    return problem, solution(steps, ans), Fraction(ans)


_WORD_PROBLEMS: list[tuple[Callable, int]] = [
    (_wp_more, 3),
    (_wp_left, 3),
    (_wp_groups, 2),
    (_wp_share, 2),
    (_wp_cost, 2),
    (_wp_speed, 1),
    (_wp_days, 1),
    (_wp_fraction, 1),
]


def level3(rng: random.Random):
    make = rng.choices([f for f, _ in _WORD_PROBLEMS], weights=[w for _, w in _WORD_PROBLEMS])[0]
    problem, sol, ans = make(rng)
    return problem, sol, ans, "Word Problems"


# ---------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------

LEVELS = {1: level1, 2: level2, 3: level3}


def make_rows(rng: random.Random, n: int, split: str, exclude: set[str]) -> list[dict]:
    """`n` rows with problems not in `exclude` (which is updated), levels drawn with LEVEL_WEIGHTS."""
    rows, counters = [], dict.fromkeys(LEVELS, 0)
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 100 * n:
            raise RuntimeError(f"could not draw {n} distinct problems for {split}")
        level = rng.choices(list(LEVEL_WEIGHTS), weights=list(LEVEL_WEIGHTS.values()))[0]
        problem, sol, ans, subject = LEVELS[level](rng)
        if problem in exclude:
            continue
        exclude.add(problem)
        answer = fmt(ans)
        counters[level] += 1
        rows.append(
            {
                "problem": problem,
                "solution": sol,
                "answer": answer,
                "subject": subject,
                "level": level,
                "unique_id": f"synthetic/{split}/{level}/{counters[level]:05d}",
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--train", type=int, default=2000, help="training rows (default 2000)")
    parser.add_argument("--test", type=int, default=200, help="test rows (default 200)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "math",
        help="output folder (default data/math)",
    )
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    seen: set[str] = set()
    test = make_rows(rng, args.test, "test", seen)  # test first: training never repeats a test problem
    train = make_rows(rng, args.train, "train", seen)
    write_jsonl(train, args.out / "train.jsonl")
    write_jsonl(test, args.out / "test.jsonl")
    print(
        f"wrote {len(train)} rows to {args.out / 'train.jsonl'} and {len(test)} rows to {args.out / 'test.jsonl'}"
    )


if __name__ == "__main__":
    main()
