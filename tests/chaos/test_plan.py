"""The schedule is a pure function of the seed (what makes a failing seed reproducible)."""

from __future__ import annotations

import json

from refreshbus_chaos.plan import CONFIG_KEY, FAULT_KINDS, content, make_plan


def test_a_seed_names_one_schedule():
    assert make_plan(7, 60) == make_plan(7, 60)
    assert make_plan(7, 60) != make_plan(8, 60)


def test_every_fault_kind_is_scheduled_and_none_in_the_last_round():
    plan = make_plan(3, 24)
    assert {f.kind for f in plan.faults} == set(FAULT_KINDS)
    assert plan.rounds[-1].fault is None
    assert len(make_plan(3, 200).faults) == 66


def test_the_run_never_ends_with_a_deleted_refresh():
    for seed in range(50):
        explicit = [r for r in make_plan(seed, 12).rounds if r.kind != "edit"]
        assert not explicit or explicit[-1].kind != "delete"


def test_content_names_its_parts_by_hash():
    data = content(1, "web-config", 5)
    config = json.loads(data[CONFIG_KEY])
    assert config["version"] == 5
    assert set(config["parts"]) == set(data) - {CONFIG_KEY}
    assert content(1, "web-config", 5) == data
    assert content(1, "web-config", 6) != data
