"""Offline routing evaluation: what a routing policy would cost and lose, before it ships.

The input is per-prompt evaluation results of two models, a cheap one and a premium one
(the RouteLLM format in shared/data/routellm): a CSV with a `prompt` column, one column
per model holding True/False (answered correctly) or a score in [0, 1], and optionally
`<model>_response` with the answer text; or MT-Bench judgements (JSON lines with
question_id, model, turn, score 1-10 and the judge's prompt, which holds the conversation).

Each policy is simulated over every prompt, request by request:

- `cascade`: the cheap model first; when its answer failed the check (False, or a score
  below the pass mark), that attempt is rejected and the premium model answers. The check
  is the evaluation's own label, so this is a perfect verifier: the best a cascade can do.
- `threshold`: a target share of the prompts goes to the premium model, the rest to the
  cheap one, with no second attempt. The prompts with the highest score go premium; the
  score is `length` (estimated prompt tokens: longer prompts are taken as harder) or
  `random` (a seeded shuffle, the baseline any real router must beat).
- `all-cheap` and `all-premium`: every prompt to one model.

Tokens are estimated from the text: about four characters a token, ceil(characters / 4),
the usual rule of thumb for English (no tokenizer download). Input is the prompt (for an
MT-Bench second turn, the whole conversation so far); output is the answer text, or a
fixed count when the file has none (MMLU). Costs use the price catalog with the same
lookup as ingest, at each simulated request's timestamp; a model without a price is an
error that names it. Quality is 1/0 for True/False, score/10 for MT-Bench, the score
itself for a score column.

This module never touches the network or the database: `send` takes any client with the
SDK's `request()` interface.
"""

from __future__ import annotations

import csv
import json
import random
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import TextIO

import genai_prices

from app.services.pricing import Price, PriceBook, Tokens, catalog_rows
from app.services.request_facts import RequestFacts, rate, request_cost, request_facts
from app.vocabulary import DEFAULT_TIERS

POLICY_KINDS = ("cascade", "threshold", "all-cheap", "all-premium")
THRESHOLD_SCORES = ("length", "random")
CHEAP, PREMIUM = "cheap", "premium"
DEFAULT_PASS_SCORE = 0.8
DEFAULT_OUTPUT_TOKENS = 16
_RESPONSE_SUFFIX = "_response"
_REQUEST_ID_NAMESPACE = uuid.UUID("5d0f7a2e-8f8e-4d35-9a55-6b1c3a7e2f10")


class ReplayError(ValueError):
    """Evaluation data that cannot be read, or a model without a price; the message names
    the file, row and column, or the model."""


def estimate_tokens(text: str) -> int:
    """ceil(characters / 4): about four characters a token, the rule of thumb for English."""
    return (len(text) + 3) // 4


# --- reading evaluation results ---------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One model's result on one prompt."""

    passed: bool
    quality: float
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class EvalItem:
    key: str
    prompt: str
    outcomes: Mapping[str, Outcome]


@dataclass(frozen=True)
class EvalSet:
    name: str
    models: tuple[str, ...]
    items: tuple[EvalItem, ...]
    files: tuple[str, ...]


def load_eval(
    path: Path,
    *,
    pass_score: float = DEFAULT_PASS_SCORE,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> EvalSet:
    """A CSV or judgements file, or every such file directly inside a folder (other JSON
    lines files there, such as contaminated_prompts.jsonl, are not results and are left out).
    pass_score: the quality at or above which a scored answer passes the cascade's check;
    output_tokens: the answer length assumed when the file has no answer text."""
    if path.is_dir():
        files = sorted(
            p
            for p in path.iterdir()
            if p.suffix == ".csv" or (p.suffix == ".jsonl" and _is_judgements(p))
        )
        if not files:
            raise ReplayError(f"{path}: no evaluation results (*.csv or judgements *.jsonl)")
        name = path.name
    elif path.is_file():
        if path.suffix not in (".csv", ".jsonl"):
            raise ReplayError(f"{path}: expected a .csv or .jsonl file")
        if path.suffix == ".jsonl" and not _is_judgements(path):
            raise ReplayError(
                f"{path}: not MT-Bench judgements (question_id, model, turn, score, user_prompt)"
            )
        files = [path]
        name = path.stem
    else:
        raise ReplayError(f"{path}: no such file or folder")

    models: tuple[str, ...] | None = None
    items: list[EvalItem] = []
    for file in files:
        if file.suffix == ".csv":
            file_models, file_items = _read_csv(
                file, pass_score=pass_score, output_tokens=output_tokens
            )
        else:
            file_models, file_items = _read_judgements(file, pass_score=pass_score)
        if models is not None and set(file_models) != set(models):
            raise ReplayError(
                f"{file}: models {', '.join(file_models)} differ from {', '.join(models)}"
                f" in {files[0].name}"
            )
        models = models or file_models
        prefix = f"{file.stem}:" if len(files) > 1 else ""
        items.extend(
            EvalItem(f"{prefix}{item.key}", item.prompt, item.outcomes) for item in file_items
        )
    if not items:
        raise ReplayError(f"{path}: no prompts")
    return EvalSet(name=name, models=models, items=tuple(items), files=tuple(map(str, files)))


@contextmanager
def utf8_text(path: Path, *, error: type[ValueError] = ReplayError) -> Iterator[TextIO]:
    """The file as UTF-8 text, a byte-order mark skipped (spreadsheets write one before the
    header); `error` naming the file when its bytes are not UTF-8."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            yield f
    except UnicodeDecodeError as decoding:
        raise error(f"{path}: not UTF-8 text ({decoding.reason})") from None


def _read_csv(
    path: Path, *, pass_score: float, output_tokens: int
) -> tuple[tuple[str, ...], list[EvalItem]]:
    with utf8_text(path) as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "prompt" not in columns:
            raise ReplayError(f"{path}: no 'prompt' column")
        models = tuple(c for c in columns if c != "prompt" and not c.endswith(_RESPONSE_SUFFIX))
        if not models:
            raise ReplayError(f"{path}: no model columns beside 'prompt'")
        items = []
        for row_number, row in enumerate(reader, start=1):
            prompt = row["prompt"] or ""
            outcomes = {}
            for model in models:
                where = f"{path} row {row_number}, column {model!r}"
                passed, quality = _judge_cell(row[model], where=where, pass_score=pass_score)
                answer = row.get(model + _RESPONSE_SUFFIX)
                outcomes[model] = Outcome(
                    passed=passed,
                    quality=quality,
                    input_tokens=estimate_tokens(prompt),
                    output_tokens=output_tokens if answer is None else estimate_tokens(answer),
                )
            items.append(EvalItem(str(row_number), prompt, outcomes))
    return models, items


def _judge_cell(value: str | None, *, where: str, pass_score: float) -> tuple[bool, float]:
    text = (value or "").strip()
    if text.lower() in ("true", "false"):
        passed = text.lower() == "true"
        return passed, float(passed)
    try:
        score = float(text)
    except ValueError:
        raise ReplayError(f"{where}: expected True, False or a score, got {text!r}") from None
    if not 0 <= score <= 1:
        raise ReplayError(f"{where}: a score must be in [0, 1], got {text}")
    return score >= pass_score, score


_JUDGEMENT_FIELDS = {"question_id", "model", "turn", "score", "user_prompt"}


def _json_lines(path: Path) -> Iterator[tuple[int, object]]:
    with utf8_text(path) as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield line_number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise ReplayError(f"{path} line {line_number}: not JSON ({error})") from None


def _is_judgements(path: Path) -> bool:
    first = next(_json_lines(path), (0, None))[1]
    return isinstance(first, dict) and _JUDGEMENT_FIELDS <= set(first)


def _read_judgements(path: Path, *, pass_score: float) -> tuple[tuple[str, ...], list[EvalItem]]:
    prompts: dict[tuple[int, int], str] = {}
    outcomes: dict[tuple[int, int], dict[str, Outcome]] = {}
    models: list[str] = []
    for line_number, record in _json_lines(path):
        where = f"{path} line {line_number}"
        if not isinstance(record, dict) or not _JUDGEMENT_FIELDS <= set(record):
            raise ReplayError(f"{where}: a judgement needs {', '.join(sorted(_JUDGEMENT_FIELDS))}")
        score = record["score"]
        if isinstance(score, bool) or not isinstance(score, int | float) or not 1 <= score <= 10:
            raise ReplayError(f"{where}, field 'score': expected 1 to 10, got {score!r}")
        user_turns, answers = _conversation(record["user_prompt"], where=where)
        key = (record["question_id"], record["turn"])
        model = record["model"]
        if model not in models:
            models.append(model)
        if model in outcomes.get(key, {}):
            raise ReplayError(f"{where}: a second judgement of {model} on question {key[0]}")
        # The model saw the user's turns and its own earlier answers; its last answer is
        # the output.
        seen = [text for pair in zip(user_turns, [*answers[:-1], ""], strict=True) for text in pair]
        quality = score / 10
        outcomes.setdefault(key, {})[model] = Outcome(
            passed=quality >= pass_score,
            quality=quality,
            input_tokens=estimate_tokens("".join(seen)),
            output_tokens=estimate_tokens(answers[-1]),
        )
        prompts.setdefault(key, "\n".join(user_turns))
    items = []
    for key in sorted(outcomes):
        missing = [m for m in models if m not in outcomes[key]]
        if missing:
            raise ReplayError(
                f"{path}: question {key[0]} turn {key[1]} has no judgement of {missing[0]}"
            )
        items.append(EvalItem(f"{key[0]}-{key[1]}", prompts[key], outcomes[key]))
    return tuple(models), items


_CONVERSATION = re.compile(
    r"<\|The Start of Assistant A's Conversation with User\|>(.*?)"
    r"<\|The End of Assistant A's Conversation with User\|>",
    re.S,
)
_TURN = re.compile(r"### (User|Assistant A):\n(.*?)(?=\n+### (?:User|Assistant A):\n|\s*$)", re.S)
_QUESTION = re.compile(r"\[Question\]\n(.*?)\n\n\[The Start of ", re.S)
_ANSWER = re.compile(
    r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S
)


def _conversation(judge_prompt: str, *, where: str) -> tuple[list[str], list[str]]:
    """The user's turns and the assistant's answers inside an MT-Bench judge prompt."""
    found = _CONVERSATION.search(judge_prompt)
    if found:
        turns = _TURN.findall(found.group(1))
        user = [text for who, text in turns if who == "User"]
        answers = [text for who, text in turns if who == "Assistant A"]
    else:
        question, answer = _QUESTION.search(judge_prompt), _ANSWER.search(judge_prompt)
        user = [question.group(1)] if question else []
        answers = [answer.group(1)] if answer else []
    if not user or len(answers) != len(user):
        raise ReplayError(f"{where}, field 'user_prompt': no conversation found in it")
    return user, answers


# --- prices -------------------------------------------------------------------------------


def catalog_price_book() -> PriceBook:
    """The installed genai-prices catalog, looked up as ingest does for a project with no
    prices of its own (the ids are not database ids)."""
    return PriceBook(
        Price(id=index, project_id=None, **row) for index, row in enumerate(catalog_rows())
    )


def price_of(prices: PriceBook, model: str, at: datetime) -> Price:
    price = prices.price_at(model, None, at)
    if price is None:
        raise ReplayError(
            f"no price for model {model!r} at {at:%Y-%m-%d %H:%M} UTC in the price catalog"
            f" (genai-prices {genai_prices.__version__})"
        )
    return price


@dataclass(frozen=True)
class Route:
    cheap: str
    premium: str


def choose_route(
    evalset: EvalSet,
    *,
    prices: PriceBook,
    at: datetime,
    cheap: str | None = None,
    premium: str | None = None,
) -> Route:
    """The cheap and the premium model: as named, or with two models in the file, the one
    with the lower input + output price is the cheap one."""
    for model in (cheap, premium):
        if model is not None and model not in evalset.models:
            raise ReplayError(f"model {model!r} is not in the file; it has {_listed(evalset)}")
    others = [m for m in evalset.models if m not in (cheap, premium)]
    if cheap is None and premium is None and len(evalset.models) == 2:
        first, second = sorted(
            evalset.models,
            key=lambda m: (
                price_of(prices, m, at).input_per_mtok + price_of(prices, m, at).output_per_mtok
            ),
        )
        return Route(cheap=first, premium=second)
    if cheap is None and premium is not None and len(others) == 1:
        cheap = others[0]
    if premium is None and cheap is not None and len(others) == 1:
        premium = others[0]
    if cheap is None or premium is None or cheap == premium:
        raise ReplayError(f"name two different models, cheap and premium, of {_listed(evalset)}")
    return Route(cheap=cheap, premium=premium)


def _listed(evalset: EvalSet) -> str:
    return ", ".join(evalset.models)


# --- simulating policies ---------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    kind: str
    premium_share: float | None = None
    score: str = "length"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in POLICY_KINDS:
            raise ReplayError(f"policy: unknown {self.kind!r} (known: {', '.join(POLICY_KINDS)})")
        if self.kind == "threshold":
            if self.premium_share is None or not 0 <= self.premium_share <= 1:
                raise ReplayError("premium_share: a threshold policy needs a share in [0, 1]")
            if self.score not in THRESHOLD_SCORES:
                raise ReplayError(
                    f"score: unknown {self.score!r} (known: {', '.join(THRESHOLD_SCORES)})"
                )

    @property
    def name(self) -> str:
        """The experiment arm of the policy's requests."""
        if self.kind == "threshold":
            return f"threshold-{self.score}-{self.premium_share:g}"
        return self.kind


@dataclass(frozen=True)
class SimAttempt:
    model: str
    tier: str
    input_tokens: int
    output_tokens: int
    status: str
    reason: str | None
    cost_usd: Decimal
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0


@dataclass(frozen=True)
class SimRequest:
    key: str
    timestamp: datetime
    intended_tier: str
    attempts: tuple[SimAttempt, ...]
    quality: float

    @property
    def served(self) -> SimAttempt:
        return self.facts.served  # every simulated chain ends with an answer

    @cached_property
    def facts(self) -> RequestFacts[SimAttempt]:
        return request_facts(
            self.attempts, intended_tier=self.intended_tier, tier_ranks=DEFAULT_TIERS
        )

    @property
    def cost_usd(self) -> Decimal:
        return request_cost(a.cost_usd for a in self.attempts).known_usd


@dataclass(frozen=True)
class PolicyRun:
    policy: Policy
    requests: tuple[SimRequest, ...]

    @property
    def premium_share(self) -> float:
        return rate(sum(r.served.tier == PREMIUM for r in self.requests), len(self.requests))

    @property
    def escalation_rate(self) -> float:
        return rate(sum(r.facts.is_escalation for r in self.requests), len(self.requests))

    @property
    def quality(self) -> float:
        return sum(r.quality for r in self.requests) / len(self.requests)

    @property
    def cost_usd(self) -> Decimal:
        return sum((r.cost_usd for r in self.requests), Decimal(0))


def spread(count: int, *, start: datetime, days: int) -> list[datetime]:
    """count timestamps evenly over [start, start + days), on whole milliseconds (the
    precision the SDK sends)."""
    span_ms = days * 86_400_000
    return [start + timedelta(milliseconds=i * span_ms // count) for i in range(count)]


def simulate(
    evalset: EvalSet,
    *,
    policy: Policy,
    route: Route,
    prices: PriceBook,
    timestamps: list[datetime],
) -> PolicyRun:
    """Every prompt of the set under one policy; request i happens at timestamps[i]."""
    premium_keys = _premium_keys(evalset, policy)

    def attempt(model: str, tier: str, outcome: Outcome, at: datetime, *, last: bool):
        rejected = not last and not outcome.passed
        price = price_of(prices, model, at)
        return SimAttempt(
            model=model,
            tier=tier,
            input_tokens=outcome.input_tokens,
            output_tokens=outcome.output_tokens,
            status="rejected" if rejected else "ok",
            reason="quality_check" if rejected else None,
            cost_usd=price.cost(Tokens(outcome.input_tokens, outcome.output_tokens)),
        )

    requests = []
    for item, at in zip(evalset.items, timestamps, strict=True):
        cheap, premium = item.outcomes[route.cheap], item.outcomes[route.premium]
        if policy.kind == "cascade" and not cheap.passed:
            intended = CHEAP
            chain = [
                attempt(route.cheap, CHEAP, cheap, at, last=False),
                attempt(route.premium, PREMIUM, premium, at, last=True),
            ]
        elif policy.kind == "all-premium" or item.key in premium_keys:
            intended = PREMIUM
            chain = [attempt(route.premium, PREMIUM, premium, at, last=True)]
        else:
            intended = CHEAP
            chain = [attempt(route.cheap, CHEAP, cheap, at, last=True)]
        served = premium if chain[-1].tier == PREMIUM else cheap
        requests.append(SimRequest(item.key, at, intended, tuple(chain), served.quality))
    return PolicyRun(policy, tuple(requests))


def _premium_keys(evalset: EvalSet, policy: Policy) -> set[str]:
    """The prompts a threshold policy sends to the premium model: the round(share × n) with
    the highest score (ties: the earlier prompt first)."""
    if policy.kind != "threshold":
        return set()
    ranked = list(evalset.items)
    if policy.score == "length":
        ranked.sort(key=lambda item: -estimate_tokens(item.prompt))
    else:
        random.Random(policy.seed).shuffle(ranked)
    count = round(policy.premium_share * len(ranked))
    return {item.key for item in ranked[:count]}


def replay(
    evalset: EvalSet,
    *,
    policies: Iterable[Policy],
    route: Route,
    prices: PriceBook,
    start: datetime,
    days: int,
) -> tuple[list[PolicyRun], PolicyRun]:
    """The runs of the policies, and the all-premium run they are compared against."""
    timestamps = spread(len(evalset.items), start=start, days=days)

    def run(policy: Policy) -> PolicyRun:
        return simulate(evalset, policy=policy, route=route, prices=prices, timestamps=timestamps)

    runs = [run(policy) for policy in policies]
    reference = next((r for r in runs if r.policy.kind == "all-premium"), None)
    return runs, reference or run(Policy("all-premium"))


# --- sending through the SDK -------------------------------------------------------------


def request_id(*, experiment: str, arm: str, request: SimRequest) -> str:
    """Stable per experiment, arm, prompt and timestamp: a replay sent twice is stored once."""
    name = f"{experiment}/{arm}/{request.key}/{request.timestamp.isoformat()}"
    return str(uuid.uuid5(_REQUEST_ID_NAMESPACE, name))


def send(
    client,
    runs: Iterable[PolicyRun],
    *,
    customer_id: str,
    feature: str,
    experiment: str,
) -> int:
    """Records every simulated request with the SDK client (`client.request(...)`), as arm
    `policy.name` of `experiment`, with the quality of the served answer. The client
    delivers them in the background: flush it afterwards. Returns the count."""
    count = 0
    for run in runs:
        arm = run.policy.name
        for simulated in run.requests:
            with client.request(
                customer_id=customer_id,
                feature=feature,
                intended_tier=simulated.intended_tier,
                experiment={"name": experiment, "arm": arm},
                request_id=request_id(experiment=experiment, arm=arm, request=simulated),
                timestamp=simulated.timestamp,
            ) as req:
                for a in simulated.attempts:
                    req.attempt(
                        a.model,
                        a.tier,
                        a.input_tokens,
                        a.output_tokens,
                        status=a.status,
                        reason=a.reason,
                    )
                req.set_quality(simulated.quality, source="eval")
            count += 1
    return count
