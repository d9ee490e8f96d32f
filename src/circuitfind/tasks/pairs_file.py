"""Reading a file of prompt pairs (``task=pairs task.path=FILE``), with the standard library only.

A CSV (header row), JSONL (one object per line; ``.jsonl`` or ``.json``) or JSON (``.json``: a list
of objects) file, one prompt pair per row, in the columns the ``eap`` library and MIB use:

    clean, corrupted             the two prompts (text)
    answer, wrong_answer         the correct / an incorrect next token, as text (``" Mary"``), or
    correct_idx, incorrect_idx   the same as token ids (the ``eap`` library's CSV)
    position                     where the metric reads the logits (optional; default the clean
                                 prompt's last token; negative counts from the end)

Everything here is checked before any model or tokenizer loads, and needs no torch: a bad file ends
a run in well under a second with one line.  Whether the answers are single tokens and the prompts
of one length needs the tokenizer and is checked in ``tasks/pairs.py``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

PROMPT_COLUMNS = ("clean", "corrupted")
TEXT_ANSWERS = ("answer", "wrong_answer")
ID_ANSWERS = ("correct_idx", "incorrect_idx")
# Metrics a pairs task offers, and what each needs from the file.
NEEDS_ANSWER = {"nll", "logit_diff", "prob_diff"}
NEEDS_WRONG_ANSWER = {"logit_diff", "prob_diff"}
PAIR_METRICS = ("kl", "nll", "logit_diff", "prob_diff")


class PairsFileError(ValueError):
    """A prompt-pairs file that cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class Pair:
    """One row: the two prompts, the answers (text or token ids, None where absent) and the metric
    position (None: the last token)."""

    row: int  # 1-based, counting pairs (not header or blank lines)
    clean: str
    corrupted: str
    answer: str | int | None = None
    wrong_answer: str | int | None = None
    position: int | None = None


def read_pairs(path: str | Path, metric: str | None = None) -> list[Pair]:
    """Every pair in ``path``; ``metric`` (a name from ``PAIR_METRICS``, None for the default KL) decides
    which answer columns are required."""
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"task.path {path}: no such file" if not path.exists() else
                             f"task.path {path} is not a file")
    if metric is not None and metric not in PAIR_METRICS:
        raise PairsFileError(f"task pairs has no metric {metric!r}; choose one of {', '.join(PAIR_METRICS)}")
    records, columns = _records(path)
    if not records:
        raise PairsFileError(f"task.path {path} holds no prompt pairs")
    _check_columns(path, columns, metric)
    ids = ID_ANSWERS[0] in columns and TEXT_ANSWERS[0] not in columns
    answer_key, wrong_key = ID_ANSWERS if ids else TEXT_ANSWERS
    pairs = [_pair(path, i, record, answer_key, wrong_key, ids) for i, record in enumerate(records, 1)]
    for pair in pairs:
        if metric in NEEDS_ANSWER and pair.answer is None:
            raise PairsFileError(f"task.path {path}, row {pair.row}: {answer_key!r} is empty (metric={metric})")
        if metric in NEEDS_WRONG_ANSWER and pair.wrong_answer is None:
            raise PairsFileError(f"task.path {path}, row {pair.row}: {wrong_key!r} is empty (metric={metric})")
    return pairs


def _records(path: Path) -> tuple[list[dict], list[str]]:
    """The rows as dicts and the column names (a JSONL file's: those of its first object)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise PairsFileError(f"task.path {path} is not UTF-8 text") from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one JSON list of objects
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise PairsFileError(f"task.path {path}: not JSON ({error.msg}, line {error.lineno})") from None
        if not all(isinstance(r, dict) for r in records):
            raise PairsFileError(f"task.path {path}: expected a list of JSON objects")
        return records, list(records[0]) if records else []
    if path.suffix.lower() in (".jsonl", ".json"):
        records = []
        for line_no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PairsFileError(f"task.path {path}, line {line_no}: not JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise PairsFileError(f"task.path {path}, line {line_no}: expected a JSON object per line")
            records.append(record)
        return records, list(records[0]) if records else []
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or []]
    records = [{k.strip(): v for k, v in r.items() if k is not None}
               for r in reader if any((v or "").strip() for v in r.values() if isinstance(v, str))]
    return records, columns


def _check_columns(path: Path, columns: list[str], metric: str | None) -> None:
    def missing(column: str, why: str = "") -> PairsFileError:
        return PairsFileError(f"task.path {path}: missing column {column!r}{why} (columns: {', '.join(columns)})")

    for column in PROMPT_COLUMNS:
        if column not in columns:
            raise missing(column)
    text, ids = TEXT_ANSWERS[0] in columns, ID_ANSWERS[0] in columns
    if metric in NEEDS_ANSWER and not (text or ids):
        raise missing("answer", f" (or 'correct_idx'): metric={metric} reads the correct answer")
    wrong = TEXT_ANSWERS[1] if text or not ids else ID_ANSWERS[1]
    if metric in NEEDS_WRONG_ANSWER and wrong not in columns:
        raise missing(wrong, f": metric={metric} compares the correct answer with a wrong one")


def _pair(path: Path, row: int, record: dict, answer_key: str, wrong_key: str, ids: bool) -> Pair:
    where = f"task.path {path}, row {row}"
    prompts = []
    for column in PROMPT_COLUMNS:
        value = record.get(column)
        if not isinstance(value, str) or not value:
            raise PairsFileError(f"{where}: {column!r} is empty" if value in (None, "") else
                                 f"{where}: {column!r} must be text, got {value!r}")
        prompts.append(value)
    answers = [_answer(where, key, record.get(key), ids) for key in (answer_key, wrong_key)]
    return Pair(row, *prompts, *answers, position=_integer(where, "position", record.get("position")))


def _answer(where: str, key: str, value, ids: bool) -> str | int | None:
    if value is None or value == "":
        return None
    if ids:
        token = _integer(where, key, value)
        if token < 0:
            raise PairsFileError(f"{where}: {key} {value!r} is not a token id")
        return token
    if not isinstance(value, str):
        raise PairsFileError(f"{where}: {key} must be text, got {value!r}")
    return value


def _integer(where: str, key: str, value) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PairsFileError(f"{where}: {key} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise PairsFileError(f"{where}: {key} must be an integer, got {value!r}") from None
