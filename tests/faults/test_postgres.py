"""PostgreSQL restarted, killed or frozen under load: answers keep coming (200s, or 503s in
OpenAI's format), none waits past the bound, and once the database is back every answered
request has its usage row and audit record."""

from __future__ import annotations

import time

import pytest

from .conftest import (
    BOUND_S,
    Answer,
    Fault,
    LiveGateway,
    Load,
    Servers,
    by_kind,
    hung,
    missing_rows,
    outage,
    wait_for_rows,
)


def unexpected_kinds(answers: list[Answer]) -> dict[str, int]:
    """What no fault may produce: anything but a full 200 or a 503 with an OpenAI error code
    (no 500s, no streams cut short, no connection dropped)."""
    kinds = by_kind(answers)
    return {
        kind: count
        for kind, count in kinds.items()
        if kind != "200" and not kind.startswith("503 ")
    }


@pytest.mark.slow
@pytest.mark.parametrize("fault", [Fault.STOP, Fault.KILL], ids=["restarted", "killed"])
def test_answers_keep_coming_while_postgres_is_away_and_each_keeps_its_row(
    gateway: LiveGateway, servers: Servers, fault: Fault
) -> None:
    with Load(gateway.url, gateway.key, clients=8) as load:
        time.sleep(1.0)
        away = outage(servers.postgres, fault, 1.5)
        time.sleep(1.5)
        answers = load.stop()

    stuck = hung(answers, BOUND_S)
    assert not stuck, f"{len(stuck)} waited past {BOUND_S} s for a byte: {by_kind(stuck)}"
    assert not unexpected_kinds(answers)
    assert [answer for answer in answers if away.went_away <= answer.done < away.returning]
    assert all(answer.request_id for answer in answers if answer.answered)
    every_response = {answer.request_id for answer in answers if answer.request_id}
    wait_for_rows(gateway.database, every_response, 20.0)
    no_usage_row, no_audit_record = missing_rows(gateway.database, every_response)
    assert not no_usage_row
    assert not no_audit_record


@pytest.mark.slow
def test_a_frozen_postgres_does_not_hang_requests(gateway: LiveGateway, servers: Servers) -> None:
    fresh_key = gateway.new_key()  # not in the gateway's key cache
    with servers.postgres.frozen():
        load = Load(gateway.url, fresh_key, clients=4).start()
        time.sleep(3.0)
    answers = load.stop()

    assert answers
    stuck = hung(answers, BOUND_S)
    assert not stuck, f"{len(stuck)} waited past {BOUND_S} s for a byte: {by_kind(stuck)}"
