"""Plan format version 3: ranges of denoising steps (dense warm-up, per-range layers), round trip, versions 1 and 2
converted on load, malformed ranges refused in one line naming the file, the field and the value."""

from __future__ import annotations

import copy
import json

import pytest

from sparsesim.simulator.errors import ConfigError
from sparsesim.simulator.plan import FORMAT, READS, VERSION, Plan, PlanSteps, load_plan, parse_plan, save_plan

LAYOUT = [4, 8]
HEADS = 2
SPARSE = {"window": [2, 4], "stride": [1, 1], "dilation": [1, 1], "dense": False}
DENSE = {"window": LAYOUT, "stride": [1, 1], "dilation": [1, 1], "dense": True}


def layer(index: int, pats: list[dict]) -> dict:
    heads = [{"head": h, **pats[h], "error": 0.01 * h, "mass": 0.9} for h in range(HEADS)]
    launches = [{"heads": [h], **pats[h], "predicted_ms": 0.01 + h} for h in range(HEADS)]
    return {"layer": index, "name": f"layer{index}", "heads": heads, "launches": launches, "predicted_ms": 1.01,
            "dense_ms": 2.0}


def plan_dict(version: int = VERSION, steps: list | None = None) -> dict:
    data = {"format": FORMAT, "version": version, "workload": "tiny", "gpu": "H200", "kernel_profile": "triton",
            "dense_profile": "cudnn", "layout": LAYOUT, "causal": [False, False], "heads": HEADS, "heads_kv": HEADS,
            "head_dim": 32, "batch": 1, "dtype": "bf16", "q_tile": [2, 4], "kv_tile": [2, 4],
            "error_budget": {"mean": 0.1, "max": None, "target_speedup": None}, "mean_error": 0.01,
            "max_error": 0.01, "attention_speedup": 1.5, "e2e_predicted_speedup": 1.2, "predicted": {},
            "search": None, "layers": [layer(0, [SPARSE, DENSE]), layer(1, [DENSE, SPARSE])]}
    if steps is not None:
        data["steps"] = steps
    return data


RANGES = [{"start": 0, "stop": 2, "dense": True, "layers": []},
          {"start": 2, "stop": 5, "dense": False, "layers": [layer(0, [SPARSE, SPARSE])]},
          {"start": 5, "stop": None, "dense": False, "layers": []}]


def test_round_trip_and_what_runs_in_each_step(tmp_path) -> None:
    plan = parse_plan(plan_dict(steps=RANGES), "t")
    assert plan.steps[0] == PlanSteps(start=0, stop=2, dense=True, layers=())
    assert plan.steps[2].stop is None and plan.steps[1].layers[0].heads[1].window == (2, 4)
    text = plan.to_json()
    assert json.loads(text)["version"] == VERSION == 3 and len(json.loads(text)["steps"]) == 3
    path = save_plan(plan, tmp_path / "p.json")
    assert load_plan(path) == plan
    assert plan.layers_at(0) == plan.layers_at(1) == ()
    assert plan.layers_at(2) == plan.layers_at(4) == plan.steps[1].layers
    assert [la.layer for la in plan.layers_at(2)] == [0]
    assert plan.layers_at(5) == plan.layers_at(10_000) == plan.layers
    assert plan.range_at(3) is plan.steps[1]
    with pytest.raises(ConfigError, match="step -1"):
        plan.layers_at(-1)


def test_a_plan_without_ranges_is_one_plan_for_every_step() -> None:
    plan = parse_plan(plan_dict(), "t")
    assert plan.steps == () and plan.range_at(7) is None and plan.layers_at(7) == plan.layers
    data = json.loads(plan.to_json())
    assert "steps" not in data and data["version"] == VERSION  # the file reads as version 2 did, plus the version


@pytest.mark.parametrize("version", [1, 2])
def test_versions_1_and_2_are_converted_to_3(tmp_path, version: int) -> None:
    assert version in READS
    data = plan_dict(version)
    if version == 1:
        del data["causal"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    plan = load_plan(path)
    assert plan.steps == () and plan.causal == (False, False)
    assert json.loads(plan.to_json())["version"] == 3
    assert parse_plan(json.loads(plan.to_json()), "again") == plan


def refused(tmp_path, data: dict) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_plan(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def edited(edit) -> dict:  # noqa: ANN001 - a test helper
    steps = copy.deepcopy(RANGES)
    edit(steps)
    return plan_dict(steps=steps)


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda s: s[0].update(start=1), "field 'steps[0].start' is 1; allowed: 0 (the first step"),
    (lambda s: s[1].update(start=3), "field 'steps[1].start' is 3; allowed: 2 (where steps[0] stops"),  # a gap
    (lambda s: s[1].update(start=1), "field 'steps[1].start' is 1"),  # overlapping
    (lambda s: s[1].update(stop=2), "field 'steps[1].stop' is 2; allowed: null (to the last step) or an integer "
                                    "from 3"),
    (lambda s: s[2].update(stop=9), "field 'steps[2].stop' is 9; allowed: null in the last range"),
    (lambda s: s.reverse(), "field 'steps[0].start' is 5"),  # not sorted
    (lambda s: s[0].update(stop=None), "field 'steps[1]' is an object; allowed: no range after steps[0]"),
    (lambda s: s[0].update(layers=[layer(0, [SPARSE, SPARSE])]), "field 'steps[0].layers' is [{"),
    (lambda s: s[1].update(dense="no"), "field 'steps[1].dense' is 'no'"),
    (lambda s: s[1].update(extra=1), "unknown field 'steps[1].extra'"),
    (lambda s: s[1].pop("stop"), "missing field 'steps[1].stop'"),
    (lambda s: s[1]["layers"][0]["heads"][0].update(window=[9, 4]), "steps[1].layers[0].heads[0]"),
    (lambda s: s[1]["layers"][0]["launches"].pop(), "field 'steps[1].layers[0].launches'"),
    (lambda s: s[1].update(start=True), "field 'steps[1].start' is True"),
])
def test_bad_ranges_name_the_field(tmp_path, edit, needle: str) -> None:
    assert needle in refused(tmp_path, edited(edit))


def test_steps_in_an_older_version_and_a_non_list_are_refused(tmp_path) -> None:
    assert "unknown field 'steps'" in refused(tmp_path, plan_dict(2, steps=RANGES))
    assert "field 'steps' is 'all'; allowed: a list" in refused(tmp_path, plan_dict(steps="all"))


def test_plan_dataclass_default_has_no_ranges() -> None:
    plan = parse_plan(plan_dict(), "t")
    assert isinstance(plan, Plan) and Plan.__dataclass_fields__["steps"].default == ()
