"""Knowledge bases of (subject, relation, answer) triplets.

A knowledge base is a table with one answer per (relation, subject); a missing
fact is stored as -1.  Random knowledge bases have two structural knobs:

* ``answer_overlap`` -- how much the relations' answer sets overlap.  At 0.0
  every relation owns a disjoint set of answers, so a single answer reveals the
  relation (the *control*); at 1.0 all relations share one answer set, so only
  a (subject, answer) *pair* reveals it (the regime of the pairwise pattern).
* ``mapping`` -- ``"balanced"`` makes each relation use every answer of its
  set equally often (a bijection from subjects onto answers when the set is as
  large as the subject set: the reference, see docs/theory.md), ``"random"``
  draws each answer independently.

Built-in bases of real facts ship with the package as CSVs in
``icr_interp/task/data/`` (:meth:`KnowledgeBase.builtin`, :meth:`KnowledgeBase.builtin_names`);
``"countries"`` holds the capital, largest city, continent, currency, official
language (only where a country has a single national one) and calling code of
148 countries -- 797 facts; the facts its authors were unsure of (several
capitals, disputed largest cities, transcontinental countries) are left out.
``capital`` and ``largest_city`` share answers; the other relations' answers
are their own.
"""

import csv
import io
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

from icr_interp.plumbing import check_int
from icr_interp.task import limits

COLUMNS = ("subject", "relation", "answer")  # the CSV columns a knowledge base needs (any order, any case)
DATA = "data"  # folder of icr_interp.task holding the built-in knowledge bases, one NAME.csv each


@dataclass(frozen=True)
class KnowledgeBase:
    """Triplets (s, r, a) with at most one answer per (subject, relation)."""

    subjects: tuple[str, ...]  # subject names, index = subject id
    relations: tuple[str, ...]  # relation names, index = relation id
    answers: tuple[str, ...]  # answer names, index = answer id
    table: Int[Tensor, "relation subject"]  # answer id of (s, r), -1 if unknown
    spec: dict = field(default_factory=dict)  # how it was made (JSON-able)

    def __post_init__(self) -> None:
        expected = (len(self.relations), len(self.subjects))
        if tuple(self.table.shape) != expected:
            raise ValueError(f"table has shape {tuple(self.table.shape)}, expected {expected}")
        if self.table.numel() and (self.table.max() >= len(self.answers) or self.table.min() < -1):
            raise ValueError("table holds an answer id outside [-1, n_answers)")
        for kind, names in (("subject", self.subjects), ("relation", self.relations), ("answer", self.answers)):
            if len(set(names)) != len(names):
                raise ValueError(f"duplicate {kind} names")

    def __repr__(self) -> str:
        """One line, in the spirit of TransformerLens's config repr: sizes, relation names, shared answers."""
        shown = ", ".join(self.relations[:6]) + (f", ... ({self.n_relations})" if self.n_relations > 6 else "")
        return (f"KnowledgeBase({self.n_subjects} subjects, {self.n_relations} relations, {self.n_answers} answers, "
                f"{self.n_triplets} facts, {self.n_relations * self.n_subjects - self.n_triplets} gaps; "
                f"relations: {shown})")

    @property
    def n_subjects(self) -> int:
        return len(self.subjects)

    @property
    def n_relations(self) -> int:
        return len(self.relations)

    @property
    def n_answers(self) -> int:
        return len(self.answers)

    @property
    def n_triplets(self) -> int:
        """Number of stored facts."""
        return int((self.table >= 0).sum())

    def answer(self, subject: int, relation: int) -> int:
        """Answer id of (subject, relation); KeyError if the fact is unknown."""
        a = int(self.table[relation, subject])
        if a < 0:
            raise KeyError(f"no fact for ({self.subjects[subject]}, {self.relations[relation]})")
        return a

    def triplets(self) -> Int[Tensor, "n_triplets 3"]:
        """All facts as rows (subject, relation, answer)."""
        r, s = torch.nonzero(self.table >= 0, as_tuple=True)
        return torch.stack([s, r, self.table[r, s]], dim=1)

    def answer_sets(self) -> list[set[int]]:
        """The set of answers each relation uses."""
        return [set(row[row >= 0].tolist()) for row in self.table]

    @property
    def answer_reveals_relation(self) -> bool:
        """True when no answer is shared by two relations (the disjoint control)."""
        owners = torch.zeros(self.n_answers, dtype=torch.long)
        for answers in self.answer_sets():
            owners[list(answers)] += 1
        return bool((owners <= 1).all())

    # ------------------------------------------------------------------ make
    @classmethod
    def random(
        cls,
        n_subjects: int,
        n_relations: int,
        n_answers: int,
        answer_overlap: float = 1.0,
        seed: int = 0,
        mapping: str = "balanced",
    ) -> "KnowledgeBase":
        """A complete random knowledge base (every subject has every relation).

        Each relation gets an answer set of size ``m``: ``round(overlap * m)``
        answers from a pool shared by all relations, the rest private to it, with
        ``m`` the largest size that fits in ``n_answers`` answers in total.
        """
        for name, value in (("n_subjects", n_subjects), ("n_relations", n_relations), ("n_answers", n_answers)):
            check_int(value, name, 1)
        limits.check_bytes(limits.knowledge_bytes(n_subjects, n_relations, n_answers),
                           f"a knowledge base of {n_subjects} subjects x {n_relations} relations with "
                           f"{n_answers} answers")
        if not 0.0 <= answer_overlap <= 1.0:
            raise ValueError(f"answer_overlap must lie in [0, 1], got {answer_overlap}")
        if mapping not in ("balanced", "random"):
            raise ValueError(f"mapping must be 'balanced' or 'random', got {mapping!r}")
        gen = torch.Generator().manual_seed(seed)
        answer_sets = _answer_sets(n_relations, n_answers, answer_overlap, gen)
        rows = [_relation_row(n_subjects, ans, mapping, gen) for ans in answer_sets]
        spec = dict(kind="random", n_subjects=n_subjects, n_relations=n_relations, n_answers=n_answers,
                    answer_overlap=answer_overlap, seed=seed, mapping=mapping)
        return cls(
            subjects=tuple(f"s{i}" for i in range(n_subjects)),
            relations=tuple(f"r{i}" for i in range(n_relations)),
            answers=tuple(f"a{i}" for i in range(n_answers)),
            table=torch.stack(rows),
            spec=spec,
        )

    @classmethod
    def from_csv(cls, path: str | Path) -> "KnowledgeBase":
        """Load facts from a CSV whose header names the columns ``subject``, ``relation``, ``answer``.

        Accepts what spreadsheets write: a UTF-8 byte-order mark, spaces around
        header names, any capitalisation (``Subject``), extra named columns
        (ignored), blank lines.  Every error is one line naming the file and the
        line (and, for the header, what was read): a byte that is not UTF-8, a
        quoted field spanning lines, a row with more or fewer cells than the
        header, an empty name, two answers for one (subject, relation).
        """
        path = Path(path)
        if path.exists() and not path.is_file():
            raise ValueError(f"knowledge-base CSV {path} is a {'folder' if path.is_dir() else 'special file'}, "
                             f"not a file")
        if not path.is_file():
            raise FileNotFoundError(f"knowledge-base CSV not found: {path}")
        facts, lines = _read_facts(path)
        return cls.from_triplets(facts, source=str(path), lines=lines)

    @classmethod
    def from_triplets(cls, facts: list[tuple[str, str, str]], source: str = "triplets",
                      lines: list[int] | None = None) -> "KnowledgeBase":
        """Build from (subject, relation, answer) name triplets (names kept in first-seen order).

        ``lines`` (one per fact) are the line numbers errors name; default: a header, then one fact per line.
        """
        if not facts:
            raise ValueError(f"{source}: no facts")
        lines = lines or list(range(2, len(facts) + 2))
        for line, fact in zip(lines, facts):
            for kind, name in zip(COLUMNS, fact):
                if not name:
                    raise ValueError(f"{source}:{line}: empty {kind} name")
        subj, rel, ans = ({n: i for i, n in enumerate(dict.fromkeys(col))} for col in zip(*facts))
        limits.check_bytes(limits.knowledge_bytes(len(subj), len(rel), len(ans)),
                           f"{source}: a table of {len(subj)} subjects x {len(rel)} relations")
        table = torch.full((len(rel), len(subj)), -1, dtype=torch.long)
        for line, (s, r, a) in zip(lines, facts):
            old = int(table[rel[r], subj[s]])
            if old >= 0 and old != ans[a]:
                raise ValueError(f"{source}:{line}: ({s}, {r}) has two answers")
            table[rel[r], subj[s]] = ans[a]
        return cls(tuple(subj), tuple(rel), tuple(ans), table, spec=dict(kind="facts", source=source))

    @classmethod
    def builtin_names(cls) -> tuple[str, ...]:
        """Names of the knowledge bases shipped with the package (sorted)."""
        folder = resources.files("icr_interp.task").joinpath(DATA)
        return tuple(sorted(p.name[: -len(".csv")] for p in folder.iterdir() if p.name.endswith(".csv")))

    @classmethod
    def builtin(cls, name: str) -> "KnowledgeBase":
        """A knowledge base shipped with the package (no download), e.g. ``KnowledgeBase.builtin("countries")``.

        A missing fact is simply absent from the CSV; ``spec`` is ``{"kind": "builtin", "name": name}``.
        """
        names = cls.builtin_names()
        if name not in names:
            raise ValueError(f"no built-in knowledge base {name!r}; choose one of {', '.join(names)}")
        with resources.as_file(resources.files("icr_interp.task").joinpath(DATA, f"{name}.csv")) as path:
            kb = cls.from_csv(path)
        return replace(kb, spec=dict(kind="builtin", name=name))

    # ------------------------------------------------------------ serialise
    def to_dict(self) -> dict:
        """JSON-able description that :meth:`from_dict` turns back into this base."""
        return dict(subjects=list(self.subjects), relations=list(self.relations), answers=list(self.answers),
                    table=self.table.tolist(), spec=self.spec)

    @classmethod
    def from_dict(cls, d: dict) -> "KnowledgeBase":
        """The base :meth:`to_dict` wrote; a one-line ValueError for anything of the wrong type or shape.

        Names must be strings and the table a list (one row per relation) of lists (one integer answer id
        per subject): a float such as 3.9 is refused, not truncated to 3.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a knowledge base must be a JSON object, got {type(d).__name__}")
        names = {}
        for kind in ("subjects", "relations", "answers"):
            value = d[kind]
            if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
                bad = next((n for n in value if not isinstance(n, str)), value) if isinstance(value, list) else value
                raise ValueError(f"{kind} must be a list of strings, found {bad!r:.40}")
            names[kind] = tuple(value)
        table, n_subjects = d["table"], len(names["subjects"])
        limits.check_bytes(limits.knowledge_bytes(n_subjects, len(names["relations"]), len(names["answers"])),
                           f"a knowledge base of {n_subjects} subjects x {len(names['relations'])} relations")
        if not isinstance(table, list) or len(table) != len(names["relations"]):
            raise ValueError(f"table must be a list of {len(names['relations'])} rows (one per relation)")
        for r, row in enumerate(table):
            if not isinstance(row, list) or len(row) != n_subjects:
                raise ValueError(f"table row {r} must be a list of {n_subjects} answer ids (one per subject)")
            bad = next((a for a in row if type(a) is not int), None)  # noqa: E721 -- bool and float refused
            if bad is not None:
                raise ValueError(f"table row {r} holds {bad!r:.20}; answer ids are integers (-1: unknown)")
        spec = d.get("spec", {})
        if not isinstance(spec, dict):
            raise ValueError(f"spec must be a JSON object, got {type(spec).__name__}")
        return cls(names["subjects"], names["relations"], names["answers"],
                   torch.tensor(table, dtype=torch.long).reshape(len(table), n_subjects), spec=spec)


def _answer_sets(n_relations: int, n_answers: int, overlap: float, gen: torch.Generator) -> list[Tensor]:
    """Answer ids per relation: a shared pool plus private blocks, shuffled."""
    set_size = math.floor(n_answers / (overlap + n_relations * (1 - overlap)))
    # Rounding the shared part down adds private answers: shrink until all sets fit.
    while set_size > 0 and _n_used(set_size, n_relations, overlap) > n_answers:
        set_size -= 1
    if set_size == 0:
        raise ValueError(f"{n_answers} answers cannot give {n_relations} relations a non-empty answer set "
                         f"at answer_overlap={overlap}")
    n_shared = round(overlap * set_size)
    n_private = set_size - n_shared
    ids = torch.randperm(n_answers, generator=gen)
    shared = ids[:n_shared]
    sets = []
    for r in range(n_relations):
        private = ids[n_shared + r * n_private: n_shared + (r + 1) * n_private]
        sets.append(torch.cat([shared, private]))
    return sets


def _n_used(set_size: int, n_relations: int, overlap: float) -> int:
    """Answers needed in total when every relation has ``set_size`` of them."""
    n_shared = round(overlap * set_size)
    return n_shared + n_relations * (set_size - n_shared)


def _relation_row(n_subjects: int, answers: Tensor, mapping: str, gen: torch.Generator) -> Tensor:
    """Answer of every subject under one relation."""
    if mapping == "random":
        return answers[torch.randint(len(answers), (n_subjects,), generator=gen)]
    # balanced: every answer used floor or ceil(n_subjects / m) times, in random order
    repeated = answers[torch.randperm(len(answers), generator=gen)].repeat(math.ceil(n_subjects / len(answers)))
    return repeated[:n_subjects][torch.randperm(n_subjects, generator=gen)]


def _read_facts(path: Path) -> tuple[list[tuple[str, str, str]], list[int]]:
    """(facts, line of each fact) of a knowledge-base CSV; one-line ValueErrors naming file and line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte-order mark is not part of the first name
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{path}:{line}: byte 0x{data[e.start]:02x} at column {column} is not UTF-8 "
                         f"(save the CSV as UTF-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    facts, lines, columns, end = [], [], None, 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if start != end:
                raise ValueError(f"{path}:{start}: a quoted field spans lines {start}-{end} (a stray quote?)")
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if columns is None or _is_header(row):  # a header again: `cat a.csv b.csv` (columns may move)
                columns, width = _header_columns(row, path, start), len(row)
                header = ",".join(cell.strip() for cell in row)
                continue
            if len(row) != width:
                raise ValueError(f"{path}:{start}: {len(row)} cells, but the header {header!r} has {width} columns")
            facts.append(tuple(row[columns[k]].strip() for k in COLUMNS))
            lines.append(start)
    except csv.Error as e:  # the record that failed starts after the last one read
        hint = " (a quoted field that is never closed?)" if "end of data" in str(e) else ""
        raise ValueError(f"{path}:{end + 1}: {' '.join(str(e).split())}{hint}") from None
    if columns is None:
        raise ValueError(f"{path}: empty file; the header must name the columns {','.join(COLUMNS)}")
    return facts, lines


def _is_header(row: list[str]) -> bool:
    """Whether a row names the three columns (a header; a fact cannot be "subject,relation,answer")."""
    names = [cell.strip().lower() for cell in row]
    return all(c in names for c in COLUMNS)


def _header_columns(row: list[str], path: Path, line: int) -> dict[str, int]:
    """Column index of subject, relation and answer in a header row (names stripped, any case)."""
    names = [cell.strip().lower() for cell in row]
    read = ",".join(cell.strip() for cell in row)
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(f"{path}:{line}: header must name the columns {','.join(COLUMNS)}; read {read!r}")
    doubled = sorted({n for n in names if names.count(n) > 1 and n in COLUMNS})
    if doubled:
        raise ValueError(f"{path}:{line}: header names the column {doubled[0]!r} twice; read {read!r}")
    return {c: names.index(c) for c in COLUMNS}

