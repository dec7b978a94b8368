"""The built-in tasks.

- `arithmetic`: chains of 2-4 single-digit operands joined by + and -, solved left to right
  with one written step per operation: `Q:7+3-5+8=` -> `7+3=10;10-5=5;5+8=13;A:13`.
  The probe this design comes from found that a 1M-parameter model reaches about 30% sampled
  accuracy on it after a few CPU minutes, while operands up to 99 stay near 2%.
- `counting`: in the spirit of the paper's example (count the items, then subtract): count a
  letter in a short word with a running tally, then subtract:
  `C:b|abbcb-1=` -> `a0b1b2c2b3;3-1=2;A:2`. The decisive steps are the tally increments
  and the final subtraction; the letters copied in between are filler.
- `paths`: add 3-4 single-digit numbers in any order; several solution paths are valid:
  `S:3+8+5=` -> `3+5=8;8+8=16;A:16` or `8+5=13;13+3=16;A:16`, ... . The reference shows one
  order, so a correct response usually differs from it: only here does the positive half of
  RLSD (reweighting correct answers) carry a signal beyond "copy the reference".
- `mixed`: any of the three, with equal probability (what the shipped model is warm-started
  on).
"""

from __future__ import annotations

import random

from rlsd.tasks.base import Problem, Task


class ArithmeticTask(Task):
    name = "arithmetic"
    max_completion_length = 40

    def __init__(self, min_operands: int = 2, max_operands: int = 4, max_operand: int = 9):
        self.min_operands, self.max_operands, self.max_operand = (
            min_operands,
            max_operands,
            max_operand,
        )

    def sample(self, rng: random.Random) -> Problem:
        n = rng.randint(self.min_operands, self.max_operands)
        operands = [rng.randint(0, self.max_operand) for _ in range(n)]
        ops = [rng.choice("+-") for _ in range(n - 1)]
        question = "Q:" + str(operands[0])
        steps, value = [], operands[0]
        for op, x in zip(ops, operands[1:]):
            question += f"{op}{x}"
            new = value + x if op == "+" else value - x
            steps.append(f"{value}{op}{x}={new}")
            value = new
        answer = str(value)
        return Problem(question + "=", ";".join(steps) + f";A:{answer}", answer)


class CountingTask(Task):
    name = "counting"
    max_completion_length = 40

    def __init__(self, alphabet: str = "abcd", min_len: int = 4, max_len: int = 8):
        self.alphabet, self.min_len, self.max_len = alphabet, min_len, max_len

    def sample(self, rng: random.Random) -> Problem:
        word = "".join(
            rng.choice(self.alphabet) for _ in range(rng.randint(self.min_len, self.max_len))
        )
        target = rng.choice(self.alphabet)
        count = word.count(target)
        minus = rng.randint(0, count) if count else 0
        tally, running = [], 0
        for ch in word:
            running += ch == target
            tally.append(f"{ch}{running}")
        answer = str(count - minus)
        solution = "".join(tally) + f";{count}-{minus}={answer};A:{answer}"
        return Problem(f"C:{target}|{word}-{minus}=", solution, answer)


class PathsTask(Task):
    name = "paths"
    max_completion_length = 40

    def __init__(self, min_terms: int = 3, max_terms: int = 4):
        self.min_terms, self.max_terms = min_terms, max_terms

    def sample(self, rng: random.Random) -> Problem:
        terms = [rng.randint(0, 9) for _ in range(rng.randint(self.min_terms, self.max_terms))]
        order = terms[:]
        rng.shuffle(order)  # the reference takes one of the valid orders
        steps, value = [], order[0]
        for x in order[1:]:
            steps.append(f"{value}+{x}={value + x}")
            value += x
        question = "S:" + "+".join(map(str, terms)) + "="
        return Problem(question, ";".join(steps) + f";A:{value}", str(value))


class MixedTask(Task):
    name = "mixed"
    max_completion_length = 40

    def __init__(self):
        self.parts = [ArithmeticTask(), CountingTask(), PathsTask()]

    def sample(self, rng: random.Random) -> Problem:
        return rng.choice(self.parts).sample(rng)
