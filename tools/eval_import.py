"""Offline evaluation results from files, as POST /v1/evals results: the RouteLLM result
files (shared/data/routellm: CSVs of True/False per model, MT-Bench judgements, or a folder
of them, read by tools.replay.load_eval) or plain JSON lines, one result per line.

A RouteLLM file gives one result per prompt and model: item_id the prompt's key (its row, or
`file:row` in a folder, `question-turn` for MT-Bench), score 1 or 0 for True or False, the
judge's score / 10 for MT-Bench. The feature defaults to the file or folder name.
"""

from __future__ import annotations

import json
from pathlib import Path

from tools.replay import ReplayError, load_eval, utf8_text


class EvalFileError(ValueError):
    """A file that cannot be read as results; the message names the file and line."""


def results_from_file(
    path: Path, *, feature: str | None, task_type: str | None, tiers: dict[str, str]
) -> list[dict]:
    """The results in the file; `feature` and `task_type` fill results that lack them (a
    RouteLLM file has neither), `tiers` ({model: tier}) their tiers."""
    if path.suffix == ".jsonl" and _first_record(path).get("item_id") is not None:
        results = list(_json_lines(path))
    else:
        try:
            evalset = load_eval(path)
        except ReplayError as error:
            raise EvalFileError(str(error)) from None
        feature = feature or evalset.name
        results = [
            {"item_id": item.key, "model": model, "score": outcome.quality}
            for item in evalset.items
            for model, outcome in item.outcomes.items()
        ]
    for result in results:
        if isinstance(result, dict):
            if feature is not None:
                result.setdefault("feature", feature)
            if task_type is not None:
                result.setdefault("task_type", task_type)
            if result.get("model") in tiers:
                result.setdefault("tier", tiers[result["model"]])
    return results


def _json_lines(path: Path):
    with utf8_text(path, error=EvalFileError) as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise EvalFileError(f"{path} line {number}: not JSON ({error})") from None


def _first_record(path: Path) -> dict:
    first = next(_json_lines(path), None)
    return first if isinstance(first, dict) else {}
