"""`sql`: text-to-SQL over a shipped company database, where the business rules live in documents.

The data (`sql_data/`): `sales.db`, a small synthetic SQLite database of a company's customers
(`c`), orders (`o`) and products (`p`), and `docs/`, the company's documents: a glossary
(what an *active customer* is, what *net revenue* excludes, when the fiscal year starts), the
reporting regions (which are not the textbook ones), a data dictionary and a distractor
policy. Each binding rule ends with a `Rule NAME: VALUE` line, and the task reads its rules
from there, so the documents are the single source of truth.

A row, for `Q:net revenue in EMEA FY24?`:

- `prompt` (the student): the one-line schema, then the question;
- `answer`: the gold SQL, which the `sql` verifier runs against `database` and compares by
  result (`verifier` is `"sql"`, so `rlsd train` and `rlsd eval` route to it by themselves);
- `privileged_context` (the self-teacher): the worked solution, i.e. the rules the question
  needs, as a SQL comment, then the gold SQL:
  `--net:ret=0;FY24:2304-2403;EMEA:DE,FR,UK,IN` + newline + `select sum(amt) from o join c ...`.
  The comment is valid SQL, so a student that writes its rules down before the query (as the
  reference does) is scored on the query alone. `--privileged` picks other kinds for the
  ablation in docs/results.md: `answer` (the gold query's result, `A:1234`), `sql` (the gold
  query alone) and `rules` (the documents' rules alone, the comment line).

Sized for a character-level model: five question templates with parameters, short table and
column names (months are YYMM integers), one schema line of 52 characters; the student's
prompt plus the longest solution fit in 256 positions (238 with BOS and EOS), the
self-teacher's, which also holds the reference, needs 397: a tiny model for this task is
built with 512 positions (RoPE, so the parameter count is unchanged). The shipped one,
`rlsd/models/tiny_sql` (`default_model`), is `rlsd sft --task sql --max_positions 512
--num_problems 64 --num_train 20000 --max_steps 600 --eval_every 100 --target_accuracy 1.0
--counterfactual_fraction 1.0`: the student's examples are 64 of the training questions, so
that the RL stage has questions it has not memorised; the self-teacher's are training
questions asked under rules drawn at random (`counterfactual`), so that it learns to read
its reference rather than recall an answer.

Held-out split, fixed across seeds (the seed only orders the problems): every question about
`CA` or `IN` (countries never asked about in training, though they occur inside region lists)
and a fixed fifth of the other (template, parameters) combinations. The pools are finite
(127 training and 47 held-out questions): `problems(split, n)` returns at most the
split's pool.
"""

from __future__ import annotations

import copy
import random
import re
import sqlite3
import zlib
from pathlib import Path

from rlsd.tasks.base import Problem, Task

DATA_DIR = Path(__file__).parent / "sql_data"
DB_PATH = DATA_DIR / "sales.db"
DOCS_DIR = DATA_DIR / "docs"

SCHEMA = "c(cid,cc,lo,st) o(oid,cid,pid,ym,amt,ret) p(pid,cat)"
COUNTRIES = ("DE", "FR", "UK", "IN", "US", "CA", "BR", "JP", "AU", "SG", "MX")
REGIONS = ("EMEA", "AMER", "APAC")
CATEGORIES = ("HW", "SW", "SV")
YEARS = (21, 22, 23, 24, 25)  # FY21 .. FY25: the data covers April 2020 to March 2025
EVAL_COUNTRIES = ("CA", "IN")  # never asked about in the training split
_EVAL_FRACTION = 5  # one combination in five (by a hash of the question) is held out

_RULE_RE = re.compile(r"^Rule (\w+): (.+)$", re.MULTILINE)


def read_rules(docs_dir: Path = DOCS_DIR) -> dict[str, str]:
    """The `Rule NAME: VALUE` lines of the documents, by name."""
    rules: dict[str, str] = {}
    for path in sorted(docs_dir.glob("*.md")):
        for name, value in _RULE_RE.findall(path.read_text()):
            if name in rules:
                raise ValueError(f"{path}: rule {name!r} is defined twice in {docs_dir}")
            rules[name] = value.strip()
    return rules


def fiscal_year_months(year: int, start_month: int) -> tuple[int, int]:
    """First and last month (YYMM) of fiscal year `year` (two digits), which starts in
    `start_month` and is named after the calendar year it ends in."""
    if start_month == 1:
        return year * 100 + 1, year * 100 + 12
    return (year - 1) * 100 + start_month, year * 100 + start_month - 1


def fiscal_year(month: int, start_month: int = 4) -> int:
    """The fiscal year (two digits) of a month (YYMM)."""
    return month // 100 + (month % 100 >= start_month and start_month != 1)


class SqlTask(Task):
    name = "sql"
    max_completion_length = 176  # the longest worked solution is 156 characters
    default_model = "tiny_sql"  # the tiny character model with 512 positions, SQL warm start
    # --privileged: the rules and the gold query ("solution", the default), the query's result
    # alone ("answer"), the gold query alone ("sql"), the documents' rules alone ("rules")
    privileged_kinds = ("solution", "answer", "sql", "rules")
    # `rlsd train --task sql`: 60 steps of the CPU default's 128 completions, under 10 minutes
    # on 2 CPU cores (completions are 5x longer than the other tasks'); every held-out question
    # sampled 4 times (47 questions are few). With the first warm start, 32 completions a step
    # moved nothing (results.md)
    train_defaults = {"max_steps": 60, "eval_every": 20, "eval_num_samples": 4}

    def __init__(self, docs_dir: Path = DOCS_DIR, database: Path = DB_PATH):
        rules = read_rules(docs_dir)
        missing = {"active", "net", "FY", *REGIONS} - set(rules)
        if missing:
            raise ValueError(f"{docs_dir}: no 'Rule NAME: VALUE' line for {sorted(missing)}")
        self.database = str(Path(database).resolve())
        self.active, self.net = rules["active"], rules["net"]
        start = re.match(r"starts month (\d\d)", rules["FY"])
        if start is None:
            raise ValueError(f"{docs_dir}: 'Rule FY' must start with 'starts month MM'")
        self.fy_start = int(start.group(1))
        self.regions = {r: rules[r].split(",") for r in REGIONS}
        self._results: dict[str, str] = {}
        # the questions `counterfactual` asks under other rules (it is called once per SFT example)
        self._training = [c for c in self.combinations() if not self.is_held_out(*c)]

    # ----------------------------------------------------------------- the rules, as SQL
    def _place(self, place: str) -> tuple[str, list[str]]:
        """The condition on `c.cc` and the rule notes for a country or a region."""
        if place in self.regions:
            members = self.regions[place]
            return "cc in(" + ",".join(f"'{m}'" for m in members) + ")", [
                f"{place}:{','.join(members)}"
            ]
        return f"cc='{place}'", []

    def _year(self, year: int) -> tuple[str, list[str]]:
        first, last = fiscal_year_months(year, self.fy_start)
        return f"ym between {first} and {last}", [f"FY{year}:{first}-{last}"]

    def solve(self, template: str, param: dict) -> tuple[str, str, str]:
        """(question, notes, gold SQL) of one template with its parameters."""
        if template == "active":
            cond, notes = self._place(param["place"])
            return (
                f"active customers in {param['place']}?",
                ";".join([f"active:{self.active}", *notes]),
                f"select count(*) from c where {cond} and {self.active}",
            )
        year_cond, year_notes = self._year(param["year"])
        fy = f"FY{param['year']}"
        if template == "revenue":
            return (
                f"net revenue {fy}?",
                ";".join([f"net:{self.net}", *year_notes]),
                f"select sum(amt) from o where {self.net} and {year_cond}",
            )
        if template == "revenue_place":
            cond, notes = self._place(param["place"])
            return (
                f"net revenue in {param['place']} {fy}?",
                ";".join([f"net:{self.net}", *year_notes, *notes]),
                f"select sum(amt) from o join c using(cid) where {self.net} and {cond} "
                f"and {year_cond}",
            )
        if template == "revenue_category":
            return (
                f"net revenue of {param['cat']} {fy}?",
                ";".join([f"net:{self.net}", *year_notes]),
                f"select sum(amt) from o join p using(pid) where cat='{param['cat']}' and "
                f"{self.net} and {year_cond}",
            )
        if template == "gross_place":
            cond, notes = self._place(param["place"])
            return (
                f"gross revenue in {param['place']} {fy}?",
                ";".join([*year_notes, *notes]),
                f"select sum(amt) from o join c using(cid) where {cond} and {year_cond}",
            )
        raise ValueError(f"unknown sql template {template!r}")

    def combinations(self) -> list[tuple[str, dict]]:
        """Every (template, parameters) the task asks about."""
        places = [*COUNTRIES, *REGIONS]
        out: list[tuple[str, dict]] = [("active", {"place": p}) for p in places]
        for year in YEARS:
            out.append(("revenue", {"year": year}))
            out += [("revenue_place", {"place": p, "year": year}) for p in places]
            out += [("revenue_category", {"cat": k, "year": year}) for k in CATEGORIES]
            out += [("gross_place", {"place": p, "year": year}) for p in places]
        return out

    def result(self, sql: str) -> str:
        """The gold query's result as the verifier sees it (one value), run read-only once."""
        if sql not in self._results:
            conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
            try:
                (value,) = conn.execute(sql).fetchone()
            finally:
                conn.close()
            self._results[sql] = str(value)
        return self._results[sql]

    def problem(self, template: str, param: dict) -> Problem:
        question, notes, sql = self.solve(template, param)
        return Problem(
            f"{SCHEMA}\nQ:{question}",
            f"--{notes}\n{sql}",
            sql,
            columns={"database": self.database, "verifier": "sql"},
            privileged={"answer": f"A:{self.result(sql)}", "sql": sql, "rules": f"--{notes}"},
        )

    @staticmethod
    def is_held_out(template: str, param: dict) -> bool:
        """The fixed held-out split: unseen countries, and a fixed fifth of the combinations."""
        if param.get("place") in EVAL_COUNTRIES:
            return True
        key = template + repr(sorted(param.items()))
        return zlib.crc32(key.encode()) % _EVAL_FRACTION == 0

    # ----------------------------------------------------------------- the Task interface
    def sample(self, rng: random.Random) -> Problem:
        return self.problem(*rng.choice(self.combinations()))

    def counterfactual(self, rng: random.Random) -> Problem:
        """A training question under rules drawn at random: another cut-off month (or the CRM
        flag) for `active`, a minimum amount or no returns for `net`, another first month of
        the fiscal year, ten countries dealt anew into regions of four, three and three. The
        worked solution stays within `max_completion_length` (162 characters at most)."""
        other = copy.copy(self)  # the same database and result cache, other rules
        month = rng.choice([y * 100 + m for y in range(21, 26) for m in range(1, 13)])
        other.active = rng.choice([f"lo>={month}", "st='A'"])
        other.net = rng.choice(["ret=0", f"amt>={rng.randrange(100, 1000, 100)}"])
        other.fy_start = rng.randint(1, 12)
        dealt = rng.sample(COUNTRIES, 10)
        other.regions = dict(zip(REGIONS, (dealt[:4], dealt[4:7], dealt[7:]), strict=True))
        return other.problem(*rng.choice(self._training))

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """At most `n` distinct problems of `split`, in an order set by `seed`; the split itself
        does not depend on the seed (see the module docstring)."""
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        pool = [
            self.problem(t, p)
            for t, p in self.combinations()
            if self.is_held_out(t, p) == (split == "eval")
        ]
        random.Random(seed * 7919 + (split == "eval")).shuffle(pool)
        return pool[:n]


# ------------------------------------------------------------------------ the shipped data
def build_database(path: Path = DB_PATH, seed: int = 0) -> None:
    """(Re)build the synthetic company database (deterministic in `seed`).

    60 months of orders (April 2020 to March 2025) from customers in `COUNTRIES`, half of
    them active; a quarter of the orders are returned; the CRM flag `st` is 'A' for every
    active customer and most inactive ones, as the glossary warns."""
    rng = random.Random(seed)
    months = [(y % 100) * 100 + m for y in range(2020, 2026) for m in range(1, 13)]
    months = [m for m in months if 2004 <= m <= 2503]
    products = [(pid, CATEGORIES[pid % 3]) for pid in range(1, 10)]
    customers, orders = [], []
    cid = oid = 0
    for cc in COUNTRIES:
        for k in range(rng.randint(5, 7)):
            cid += 1
            # every other customer stopped ordering before April 2024: "active" matters
            last = rng.choice(months[48:] if k % 2 == 0 else months[6:48])
            # the first customer of a country has ordered since the start: no empty year
            first = months[0] if k == 0 else rng.choice([m for m in months if m <= last][:-3])
            span = [m for m in months if first <= m <= last]
            mine = sorted(rng.choice(span) for _ in range(24 if k == 0 else 10)) + [last]
            for ym in mine:
                oid += 1
                pid, _ = rng.choice(products)
                ret = int(rng.random() < 0.25)
                orders.append((oid, cid, pid, ym, rng.randrange(50, 1000, 10), ret))
            stale = k % 2 == 0 or k == 1 or rng.random() < 0.85  # never reset to 'I'
            customers.append((cid, cc, last, "A" if stale else "I"))
    # every country has a returned order in every fiscal year, so "net" always matters
    country = {c[0]: c[1] for c in customers}
    returned = {(country[o[1]], fiscal_year(o[3])) for o in orders if o[5]}
    for i, o in enumerate(orders):
        if (country[o[1]], fiscal_year(o[3])) not in returned:
            orders[i] = (*o[:5], 1)
            returned.add((country[o[1]], fiscal_year(o[3])))
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            "CREATE TABLE c(cid INTEGER PRIMARY KEY, cc TEXT, lo INTEGER, st TEXT);"
            "CREATE TABLE o(oid INTEGER PRIMARY KEY, cid INTEGER REFERENCES c(cid),"
            " pid INTEGER REFERENCES p(pid), ym INTEGER, amt INTEGER, ret INTEGER);"
            "CREATE TABLE p(pid INTEGER PRIMARY KEY, cat TEXT);"
        )
        conn.executemany("INSERT INTO p VALUES (?, ?)", products)
        conn.executemany("INSERT INTO c VALUES (?, ?, ?, ?)", customers)
        conn.executemany("INSERT INTO o VALUES (?, ?, ?, ?, ?, ?)", orders)
        conn.commit()
        conn.execute("VACUUM")
    finally:
        conn.close()
