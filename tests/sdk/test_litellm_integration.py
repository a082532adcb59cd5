"""routeledger.integrations.litellm with LiteLLM's real Router, offline (its bundled price map)
against the fake OpenAI-compatible server, sending to the real API; checked through the
metrics API."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from decimal import Decimal

import pytest

# LiteLLM would fetch its price map over the network at import; importing it takes seconds,
# so it is imported once, here, for the session.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import litellm  # noqa: E402
from litellm import Router  # noqa: E402
from routeledger import RouteLedger  # noqa: E402
from routeledger.integrations.litellm import RouteLedgerLogger  # noqa: E402

from tests.helpers import by_model, make_project, metrics, set_price
from tests.helpers import CACHED_TOKENS, COMPLETION_TOKENS, PROMPT_TOKENS, SLOW_SECONDS  # noqa: E402

MESSAGES = [{"role": "user", "content": "hi"}]
CALL = {"customer_id": "acme", "feature": "support-chat"}


@pytest.fixture
def project(live_api):
    return make_project(baseline_model=None)


@pytest.fixture(scope="module")
def shared_logger(tmp_path_factory):
    """One logger for the module: LiteLLM keeps every callback it was ever given in lists of
    its own, so a logger per test would leave the earlier ones listening."""
    idle = RouteLedger(api_key="rl_idle", spool_dir=tmp_path_factory.mktemp("idle-spool"))
    logger = RouteLedgerLogger(idle, failed_call_settle_seconds=60)
    litellm.callbacks = [logger]
    yield logger
    litellm.callbacks = []
    idle.shutdown(0)


@pytest.fixture
def route_logger(shared_logger, live_api, project, tmp_path):
    """The logger, sending to this test's project."""
    idle = shared_logger.ledger
    shared_logger.ledger = RouteLedger(
        api_key=project.ingest_key, endpoint=live_api.url, spool_dir=tmp_path
    )
    yield shared_logger
    shared_logger.ledger.shutdown()
    shared_logger.ledger = idle
    shared_logger.failed_call_settle_seconds = 60


def deployment(fake_openai, group: str, model: str, **model_info) -> dict:
    return {
        "model_name": group,
        "litellm_params": {"model": f"openai/{model}", "api_base": fake_openai.url,
                           "api_key": "test"},
        "model_info": model_info,
    }  # fmt: skip


def cheap_falling_back(fake_openai, primary: str, fallback: str, *, num_retries: int) -> Router:
    """A Router whose cheap group (`primary`) falls back to the standard one (`fallback`)."""
    return Router(
        model_list=[deployment(fake_openai, "cheap", primary),
                    deployment(fake_openai, "standard", fallback)],
        fallbacks=[{"cheap": ["standard"]}],
        num_retries=num_retries,
    )  # fmt: skip


def wait_until(condition, timeout: float = 20.0) -> None:
    """Polls while LiteLLM's callbacks, which run after the call returns, catch up."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def call_in_app(router: Router, until, **call):
    """router.acompletion(**call) in an event loop that, like an app's, goes on running (the
    async callbacks are tasks of that loop) until `until()` holds; returns the response or
    the exception the call raised."""

    async def app():
        try:
            outcome = await router.acompletion(messages=MESSAGES, **call)
        except Exception as error:  # the caller's view of a call that failed
            outcome = error
        deadline = time.monotonic() + 20
        while not until():
            assert time.monotonic() < deadline, "callbacks did not arrive in time"
            await asyncio.sleep(0.05)
        return outcome

    return asyncio.run(app())


def test_a_failing_primary_retried_then_a_served_fallback_is_one_request(
    http, engine, fake_openai, project, route_logger
):
    router = cheap_falling_back(fake_openai, "gpt-4o-mini-fail", "gpt-4o", num_retries=2)
    response = call_in_app(
        router, lambda: project.count_requests() == 1, model="cheap", metadata=CALL
    )
    assert response.choices[0].message.content == "hi"

    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["attempts"] == 4  # three tries, then the fallback
    assert body["fallback_rate"] == 1.0 and body["failover_rate"] == 1.0
    assert body["escalation_rate"] == 1.0
    assert body["intended_split"] == {"cheap": 1.0} and body["served_split"] == {"standard": 1.0}
    models = by_model(body)
    assert (models["gpt-4o-mini-fail"]["attempts"], models["gpt-4o-mini-fail"]["served"]) == (3, 0)
    assert (models["gpt-4o"]["tier"], models["gpt-4o"]["served"]) == ("standard", 1)
    # gpt-4o is in LiteLLM's price map, so its cost comes from LiteLLM.
    assert Decimal(models["gpt-4o"]["cost_usd"]) > 0 and body["unpriced_requests"] == 0
    customers = metrics(http, engine, project, "customers")["customers"]
    assert [(c["customer_id"], c["requests"]) for c in customers] == [("acme", 1)]


def test_every_deployment_failing_is_one_failed_request(
    http, engine, fake_openai, project, route_logger
):
    # Models of their own: LiteLLM cools down a failing deployment for the whole process.
    router = Router(
        model_list=[deployment(fake_openai, "cheap", "acme-small-fail"),
                    deployment(fake_openai, "premium", "acme-large-fail")],
        fallbacks=[{"cheap": ["premium"]}],
        num_retries=1,
    )  # fmt: skip
    calls_before = len(fake_openai.calls)
    outcome = call_in_app(
        router,
        lambda: sum(len(c.attempts) for c in route_logger._calls.values()) == 4,
        model="cheap",
        metadata=CALL,
    )
    assert isinstance(outcome, litellm.InternalServerError)
    assert len(fake_openai.calls) - calls_before == 4
    # LiteLLM never says it gave up: the call is sent once nothing more came for it for the
    # settle time (or on flush).
    assert project.count_requests() == 0
    route_logger.failed_call_settle_seconds = 0.5
    wait_until(lambda: project.count_requests() == 1)

    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["attempts"] == 4 and body["failed"] == 1
    assert body["failover_rate"] == 1.0 and body["served_split"] == {}
    assert {m["model"]: m["attempts"] for m in body["by_model"]} == {
        "acme-small-fail": 2,
        "acme-large-fail": 2,
    }


def test_a_fallback_the_router_makes_after_a_retry_after_is_still_the_calls_attempt(
    http, engine, fake_openai, project, route_logger
):
    """The primary's last try answers 429 with Retry-After: the Router waits that long before
    its fallback, longer than the settle time, and the call is still one request (its
    failures were sent as a failed request of their own, the fallback as another)."""
    route_logger.failed_call_settle_seconds = 1.5  # under the Router's wait, 2 s and more
    router = cheap_falling_back(fake_openai, "acme-ratelimited", "gpt-4o", num_retries=1)
    call_in_app(router, lambda: project.count_requests() >= 1, model="cheap", metadata=CALL)
    time.sleep(2)  # a split would have sent its second request by now
    body = metrics(http, engine, project)
    assert (body["requests"], body["attempts"], body["fallback_rate"]) == (1, 3, 1.0)


def test_a_call_the_router_does_not_retry_is_sent_after_the_settle_time(
    http, engine, fake_openai, project, route_logger
):
    """A 400 is not retried, whatever retries the Router has left: the failed call is sent
    once the settle time passed (it waited for the attempt timeout, ten minutes)."""
    route_logger.failed_call_settle_seconds = 0.5
    router = Router(model_list=[deployment(fake_openai, "cheap", "acme-badrequest")], num_retries=2)
    outcome = call_in_app(router, lambda: route_logger._calls != {}, model="cheap", metadata=CALL)
    assert isinstance(outcome, litellm.BadRequestError)
    wait_until(lambda: project.count_requests() == 1, timeout=10)
    body = metrics(http, engine, project)
    assert (body["requests"], body["attempts"], body["failed"]) == (1, 1, 1)


def test_a_call_sent_straight_to_its_fallback_by_a_cooldown_is_an_escalation(
    http, engine, fake_openai, project, route_logger
):
    """Once the cheap group is cooled down after its failures, the Router sends calls straight
    to the fallback: they still intended the cheap tier, the group the app asked for (they
    were stored as intended standard, served standard: no escalation during the outage)."""
    router = Router(
        model_list=[deployment(fake_openai, "cheap", "acme-cooled-fail"),
                    deployment(fake_openai, "cheap", "acme-cooled-2-fail"),
                    deployment(fake_openai, "standard", "gpt-4o")],
        fallbacks=[{"cheap": ["standard"]}],
        num_retries=0,
        allowed_fails=1,
        cooldown_time=120,
    )  # fmt: skip
    calls_before = len(fake_openai.calls)

    async def app():
        for number in range(6):
            await router.acompletion(
                model="cheap", messages=MESSAGES, metadata={**CALL, "customer_id": f"c-{number}"}
            )
        deadline = time.monotonic() + 20
        while project.count_requests() < 6:
            assert time.monotonic() < deadline, "callbacks did not arrive in time"
            await asyncio.sleep(0.05)

    asyncio.run(app())
    straight = 6 * 2 - (len(fake_openai.calls) - calls_before)
    assert straight > 0  # some calls skipped the cooled-down group
    body = metrics(http, engine, project)
    assert body["requests"] == 6 and body["intended_split"] == {"cheap": 1.0}
    assert body["escalation_rate"] == 1.0


def test_a_model_litellm_prices_at_zero_is_priced_by_routeledger(
    http, engine, fake_openai, project, route_logger
):
    set_price(http, project, "acme-house-model")
    router = Router(
        model_list=[deployment(fake_openai, "house", "acme-house-model", routeledger_tier="cheap")]
    )
    router.completion(model="house", messages=MESSAGES, metadata={"feature": "search"}, user="u7")
    wait_until(lambda: project.count_requests() == 1)

    body = metrics(http, engine, project)
    assert body["requests"] == 1 and body["served_split"] == {"cheap": 1.0}  # from model_info
    # Not LiteLLM's $0: 32 uncached input tokens at $1, 10 cached at $0.5, 7 output at $2.
    expected = (
        (PROMPT_TOKENS - CACHED_TOKENS) + CACHED_TOKENS * Decimal("0.5") + COMPLETION_TOKENS * 2
    ) / 10**6
    assert Decimal(body["cost_usd"]) == expected and body["unpriced_requests"] == 0
    customers = metrics(http, engine, project, "customers")["customers"]
    assert [(c["customer_id"], c["requests"]) for c in customers] == [("u7", 1)]


def test_calls_of_one_conversation_are_requests_of_their_own(
    http, engine, fake_openai, project, route_logger
):
    """A session id, or a trace id in the metadata (Langfuse's), names a conversation: LiteLLM
    puts it in the logging object's trace_id, but each Router call is a request."""
    router = Router(model_list=[deployment(fake_openai, "cheap", "gpt-4o-mini")])
    conversation = [
        {"metadata": {**CALL, "session_id": "conv-1"}},
        {"metadata": {**CALL, "session_id": "conv-1"}},
        {"metadata": {**CALL, "trace_id": "langfuse-trace-1"}},
        {"metadata": CALL, "litellm_session_id": "sess-42"},
    ]
    for number, call in enumerate(conversation, start=1):
        call_in_app(router, lambda n=number: project.count_requests() == n, model="cheap", **call)
    body = metrics(http, engine, project)
    assert body["requests"] == 4 and body["attempts"] == 4


def test_a_fallback_slower_than_the_settle_time_is_still_the_calls_attempt(
    http, engine, fake_openai, project, route_logger
):
    """The primary fails at once; its fallback answers after SLOW_SECONDS, longer than the
    settle time: the call waits while its fallback is under way, and is one served request."""
    route_logger.failed_call_settle_seconds = SLOW_SECONDS / 4
    # No retry, so the fallback at once (a retry waits out a backoff first).
    router = cheap_falling_back(fake_openai, "acme-mini-fail", "gpt-4o-slow", num_retries=0)
    response = call_in_app(
        router, lambda: project.count_requests() == 1, model="cheap", metadata=CALL
    )
    assert response.choices[0].message.content == "hi"
    time.sleep(SLOW_SECONDS / 2)  # a failed-only copy would have been sent by now
    body = metrics(http, engine, project)
    assert (body["requests"], body["attempts"], body["failed"]) == (1, 2, 0)
    assert body["fallback_rate"] == 1.0 and body["served_split"] == {"standard": 1.0}


def test_a_flush_while_a_fallback_runs_leaves_that_call_whole(
    http, engine, fake_openai, project, route_logger
):
    """The app flushes (say, at the end of a job) while another thread's call waits on its slow
    fallback: that call is not sent as failed then (it became two requests, a failed one and
    the fallback's), but once its fallback answers, as one."""
    router = cheap_falling_back(fake_openai, "acme-flushed-fail", "gpt-4o-slow", num_retries=0)
    caller = threading.Thread(
        target=router.completion, kwargs={"model": "cheap", "messages": MESSAGES, "metadata": CALL}
    )
    caller.start()
    try:
        wait_until(lambda: route_logger._calls != {})  # the primary failed; its fallback runs
        assert route_logger.flush(5)
    finally:
        caller.join()
    wait_until(lambda: project.count_requests() == 1)
    body = metrics(http, engine, project)
    assert (body["requests"], body["attempts"], body["failed"]) == (1, 2, 0)


def test_calls_of_an_event_loop_that_ends_at_once_reach_the_ledger_with_aflush(
    http, engine, fake_openai, project, route_logger
):
    """asyncio.run(...) of calls that ends as soon as they return: LiteLLM still holds their
    callbacks, as tasks of that loop; aflush() at its end runs them and delivers the calls."""
    router = Router(model_list=[deployment(fake_openai, "cheap", "gpt-4o")])

    async def app():
        await asyncio.gather(
            *(router.acompletion(model="cheap", messages=MESSAGES, metadata=CALL)
              for _ in range(20))
        )  # fmt: skip
        assert await route_logger.aflush(10)

    asyncio.run(app())
    assert project.count_requests() == 20
    # LiteLLM's cost, a float (32 * 2.5e-6 + 10 * 1.25e-6 + 7 * 1e-5 comes out as
    # 0.00016250000000000002), is read to the digits a float holds.
    cost = by_model(metrics(http, engine, project))["gpt-4o"]["cost_usd"]
    assert Decimal(cost) == 20 * Decimal("0.0001625")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_forgets_its_parents_calls_and_lock(tmp_path):
    """A call the parent's logger holds is the parent's to send: the child starts without it,
    with a lock of its own (a lock held by a parent's thread at the fork would never be
    released in the child) and no sweeper thread."""
    ledger = RouteLedger(api_key="rl_idle", spool_dir=tmp_path)
    logger = RouteLedgerLogger(ledger)
    try:
        logger._calls["trace"] = object()  # a failed call, waiting
        with logger._lock:  # held by the parent at the fork
            pid = os.fork()
            if pid == 0:  # the child
                fresh = logger._lock.acquire(timeout=2)
                os._exit(0 if fresh and logger._calls == {} and logger._sweeper is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert list(logger._calls) == ["trace"]  # the parent keeps it
    finally:
        logger._calls.clear()
        ledger.shutdown(0)


def test_the_proxy_loads_the_logger_from_its_config(tmp_path, monkeypatch, live_api, project):
    from litellm.proxy.types_utils.utils import get_instance_fn

    monkeypatch.setenv("ROUTELEDGER_API_KEY", project.ingest_key)
    monkeypatch.setenv("ROUTELEDGER_ENDPOINT", live_api.url)
    monkeypatch.setenv("ROUTELEDGER_SPOOL_DIR", str(tmp_path / "spool"))
    # The README's file beside the proxy's config.yaml, named there as
    # `litellm_settings: {callbacks: routeledger_callback.routeledger_logger}`.
    (tmp_path / "routeledger_callback.py").write_text(
        "from routeledger.integrations.litellm import RouteLedgerLogger\n\n"
        "routeledger_logger = RouteLedgerLogger()\n"
    )
    (tmp_path / "config.yaml").write_text(
        "litellm_settings:\n  callbacks: routeledger_callback.routeledger_logger\n"
    )
    loaded = get_instance_fn(
        "routeledger_callback.routeledger_logger", config_file_path=str(tmp_path / "config.yaml")
    )
    assert isinstance(loaded, RouteLedgerLogger)
    assert loaded.ledger.flush(1)
