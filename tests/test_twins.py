"""TwinSpec, deterministic fleets and fleet YAML (fedtwin/sim/twins.py)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
from gymnasium.envs.classic_control.cartpole import CartPoleEnv

from fedtwin.core.errors import ConfigError
from fedtwin.core.seeding import derive_seed
from fedtwin.sim.fleet_files import (
    dump_fleet,
    fleet_from_data,
    load_fleet,
    load_twins,
    parse_fleet,
    save_fleet,
    save_twins,
)
from fedtwin.sim.twins import (
    HARD_FRICTION_CART_MAX,
    HARD_FRICTION_POLE_MAX,
    HARD_SENSOR_NOISE_MAX,
    SCALED_FIELDS,
    Fleet,
    TwinSpec,
    generate_twin,
    generate_twins,
    make_fleet,
    shard_names,
)

# ---------------------------------------------------------------------------------- TwinSpec


def test_defaults_are_gymnasium_cartpole_v1() -> None:
    # Prepare
    gym = CartPoleEnv()

    # Execute
    twin = TwinSpec(id="pole-07")

    # Assert
    assert (twin.gravity, twin.masscart, twin.masspole, twin.length, twin.force_mag, twin.tau) == (
        9.8,
        1.0,
        0.1,
        0.5,
        10.0,
        0.02,
    )
    assert (twin.friction_cart, twin.friction_pole, twin.sensor_noise, twin.actuator_noise) == (0, 0, 0, 0)
    assert twin.action_delay == 0
    assert twin.total_mass == gym.total_mass
    assert twin.polemass_length == gym.polemass_length
    assert twin.is_default_physics


def test_derived_quantities_follow_overridden_fields() -> None:
    # Prepare / Execute: gymnasium's phys2d computes polemass_length as masspole + length
    twin = TwinSpec(id="heavy", masspole=0.2, length=0.6, masscart=1.5)

    # Assert: 0.2 * 0.6 = 0.12 (the `+` bug would give 0.8); 1.5 + 0.2 = 1.7
    assert twin.polemass_length == pytest.approx(0.12)
    assert twin.polemass_length != pytest.approx(0.8)
    assert twin.total_mass == pytest.approx(1.7)
    assert not twin.is_default_physics


def test_integers_from_yaml_become_floats() -> None:
    twin = TwinSpec(id="a", gravity=10, action_delay=2)

    assert type(twin.gravity) is float and twin.gravity == 10.0
    assert type(twin.action_delay) is int


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("masscart", -1.0, "must be > 0"),
        ("gravity", 0.0, "must be > 0"),
        ("masspole", 0, "must be > 0"),
        ("length", -0.5, "must be > 0"),
        ("force_mag", 0.0, "must be > 0"),
        ("tau", 0.0, "must be > 0"),
        ("force_mag", float("nan"), "must be finite"),
        ("gravity", float("inf"), "must be finite"),
        ("friction_cart", -0.1, "must be >= 0"),
        ("friction_pole", -1e-6, "must be >= 0"),
        ("sensor_noise", -0.01, "must be >= 0"),
        ("actuator_noise", float("-inf"), "must be finite"),
        ("action_delay", -1, "must be >= 0"),
        ("action_delay", 1.5, "must be an integer (steps)"),
        ("action_delay", True, "must be an integer (steps)"),
        ("gravity", "9.8", "must be a number"),
        ("masscart", True, "must be a number"),
    ],
)
def test_invalid_field_names_twin_field_and_fix(field: str, value: object, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        TwinSpec(id="pole-07", **{field: value})

    message = str(info.value)
    assert message.startswith(f"twin 'pole-07': {field} {rule}, got ")
    assert message.endswith("fix it in the fleet file")


@pytest.mark.parametrize("bad_id", ["Pole-07", "pole_07", "-pole", "", "x" * 64])
def test_id_must_be_dns_label(bad_id: str) -> None:
    with pytest.raises(ConfigError, match="DNS-1123"):
        TwinSpec(id=bad_id)


def test_to_dict_keeps_id_and_non_defaults_and_from_dict_fills_defaults() -> None:
    # Prepare
    twin = TwinSpec(id="pole-07", gravity=9.61, friction_cart=0.0005, action_delay=1)

    # Execute
    data = twin.to_dict()

    # Assert
    assert data == {"id": "pole-07", "gravity": 9.61, "friction_cart": 0.0005, "action_delay": 1}
    assert TwinSpec.from_dict(data) == twin
    assert TwinSpec.from_dict({"id": "plain"}) == TwinSpec(id="plain")


def test_from_dict_rejects_unknown_fields_listing_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        TwinSpec.from_dict({"id": "pole-07", "mass_cart": 1.0})

    message = str(info.value)
    assert "twin 'pole-07'" in message and "mass_cart" in message
    assert "valid fields: id, gravity, masscart" in message


def test_from_dict_needs_an_id() -> None:
    with pytest.raises(ConfigError, match="no 'id'"):
        TwinSpec.from_dict({"gravity": 9.8})


# ------------------------------------------------------------------------------- generation


def test_a_twins_seed_is_sha256_of_fleet_seed_and_id() -> None:
    expected = int.from_bytes(hashlib.sha256(b"7:twin-003").digest()[:8], "big") >> 1

    assert derive_seed(7, "twin-003") == expected  # what generate_twin seeds the twin's generator with
    assert 0 <= expected < 2**63
    assert derive_seed(8, "twin-003") != expected and derive_seed(7, "twin-004") != expected


def test_generation_depends_on_seed_and_id_only() -> None:
    # Execute
    small = generate_twins(5, seed=7)
    large = generate_twins(50, seed=7)

    # Assert: the same id gives the same device whatever the fleet size
    assert small == large[:5]
    assert generate_twin("twin-003", seed=7) == small[3]
    assert generate_twins(5, seed=8) != small
    assert len({t.gravity for t in large}) == 50


def test_ids_are_prefixed_and_widen_past_1000() -> None:
    assert [t.id for t in generate_twins(3, seed=0, prefix="pole")] == ["pole-000", "pole-001", "pole-002"]
    assert [t.id for t in generate_twins(1000, seed=0)][-1] == "twin-999"

    ids = [t.id for t in generate_twins(1001, seed=0)]

    assert ids[0] == "twin-0000" and ids[-1] == "twin-1000"
    assert ids == sorted(ids)


@pytest.mark.parametrize("spread", [0.0, 0.15, 0.5])
def test_spread_bounds_every_scaled_parameter(spread: float) -> None:
    # Prepare
    default = TwinSpec(id="default")

    # Execute
    twins = generate_twins(200, seed=3, spread=spread)

    # Assert
    for name in SCALED_FIELDS:
        values = [getattr(t, name) for t in twins]
        base = getattr(default, name)
        assert min(values) >= base * (1 - spread) and max(values) <= base * (1 + spread)
        if spread:  # the spread is used, not just respected
            assert max(values) - min(values) > base * spread
    assert all(t.tau == 0.02 for t in twins)
    assert all(t.friction_cart == t.sensor_noise == t.action_delay == 0 for t in twins)


def test_hard_preset_varies_friction_noise_and_delay() -> None:
    # Execute
    twins = generate_twins(100, seed=3, preset="hard")

    # Assert
    assert all(0 <= t.friction_cart <= HARD_FRICTION_CART_MAX for t in twins)
    assert all(0 <= t.friction_pole <= HARD_FRICTION_POLE_MAX for t in twins)
    assert all(0 <= t.sensor_noise <= HARD_SENSOR_NOISE_MAX for t in twins)
    assert len({t.friction_cart for t in twins}) == 100
    assert len({t.actuator_noise for t in twins}) == 100
    assert {t.action_delay for t in twins} == {0, 1}
    # The physical parameters are the default preset's: hard only adds imperfections.
    plain = generate_twins(100, seed=3)
    assert [t.gravity for t in twins] == [t.gravity for t in plain]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"count": -1}, "count"),
        ({"spread": 1.0}, "spread"),
        ({"spread": -0.1}, "spread"),
        ({"preset": "extreme"}, "preset"),
    ],
)
def test_generation_rejects_bad_input(kwargs: dict, match: str) -> None:
    args = {"count": 2, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=match):
        generate_twins(**args)


def test_make_fleet_names_three_disjoint_sets() -> None:
    # Execute
    fleet = make_fleet(3, seed=7, validation_count=2, heldout_count=1)

    # Assert
    assert fleet.all_ids() == ["twin-000", "twin-001", "twin-002", "val-000", "val-001", "heldout-000"]
    assert fleet.train == generate_twins(3, seed=7)
    # Different ids, different physics, from the same seed.
    assert fleet.validation[0].gravity != fleet.train[0].gravity


def test_fleet_rejects_an_id_used_twice_across_sets() -> None:
    twin = TwinSpec(id="pole-07")

    with pytest.raises(ConfigError, match="'pole-07' appears twice"):
        Fleet(train=[twin], heldout=[TwinSpec(id="pole-07", gravity=9.0)])


# ------------------------------------------------------------------------------------- YAML

EXAMPLE = """\
twins:
  - id: pole-07
    gravity: 9.61
    masscart: 1.08
    friction_cart: 0.0005
"""


def test_example_fleet_file_loads(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "fleet.yaml"
    path.write_text(EXAMPLE)

    # Execute
    fleet = load_fleet(path)

    # Assert
    assert fleet.train == [TwinSpec(id="pole-07", gravity=9.61, masscart=1.08, friction_cart=0.0005)]
    assert fleet.validation == [] and fleet.heldout == []
    assert load_twins(path) == fleet.train


def test_fleet_round_trips_through_yaml(tmp_path: Path) -> None:
    # Prepare
    fleet = make_fleet(4, seed=11, preset="hard", validation_count=2, heldout_count=3)
    path = tmp_path / "runs" / "twins.yaml"

    # Execute
    save_fleet(fleet, path)
    loaded = load_fleet(path)

    # Assert: floats survive exactly; the text parses the same way from another source
    assert loaded == fleet
    assert parse_fleet(dump_fleet(fleet), "s3://bucket/runs/x/twins.yaml") == fleet


def test_twins_round_trip_through_yaml(tmp_path: Path) -> None:
    twins = generate_twins(3, seed=1, preset="hard")
    path = tmp_path / "twins.yaml"

    save_twins(twins, path)

    assert load_twins(path) == twins
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temp file


def test_empty_sets_are_allowed(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("twins:\n  - id: a\nvalidation:\nheldout: []\n")

    fleet = load_fleet(path)

    assert (fleet.train, fleet.validation, fleet.heldout) == ([TwinSpec(id="a")], [], [])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "twins:\n  - id: a\n    mass_cart: 2\n",
            r"twins\[0\]: twin 'a': unknown field\(s\) mass_cart; valid fields",
        ),
        ("twins: [\n", "is not valid YAML at line"),
        ("- id: a\n", "must be a mapping with a 'twins:' list"),
        ("validation:\n  - id: a\n", "has no 'twins:' list"),
        ("twins: pole-07\n", "'twins' must be a list of twins"),
        ("twins:\n  - pole-07\n", r"twins\[0\] must be a mapping of fields"),
        ("twins: []\n", "'twins' is empty"),
        ("twins:\n  - id: a\n  - id: a\n", "'a' appears twice"),
        ("twins:\n  - id: a\nheldout:\n  - id: a\n", "'a' appears twice"),
        ("twins:\n  - id: a\nheld_out: []\n", "unknown key"),
        ("twins:\n  - id: a\n    masscart: -1\n", "masscart must be > 0"),
        ("", "must be a mapping"),
    ],
)
def test_bad_fleet_file_names_the_file(tmp_path: Path, text: str, match: str) -> None:
    # Prepare
    path = tmp_path / "bad-fleet.yaml"
    path.write_text(text)

    # Execute / Assert
    with pytest.raises(ConfigError, match=match) as info:
        load_fleet(path)
    assert str(path) in str(info.value)


def test_missing_fleet_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError, match="cannot read fleet file") as info:
        load_twins(path)

    assert str(path) in str(info.value)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("twins: !!python/object/apply:os.system ['echo pwned']\n")

    with pytest.raises(ConfigError, match="not valid YAML"):
        load_fleet(path)


def test_every_field_round_trips() -> None:
    twin = TwinSpec(
        id="all",
        **{f.name: 2 if f.name == "action_delay" else 0.25 for f in dataclasses.fields(TwinSpec)[1:]},
    )

    assert parse_fleet(dump_fleet(Fleet(train=[twin])), "mem").train == [twin]


def test_shards_have_short_names_that_select_their_twins() -> None:
    fleet = make_fleet(7, 0, 0.15, "default", 1, 1)
    ids = [t.id for t in fleet.train]
    names = shard_names(ids, 3)
    assert names == ["twin-000..twin-002", "twin-003..twin-005", "twin-006"]
    assert [[t.id for t in fleet.select([n])] for n in names] == [ids[0:3], ids[3:6], ids[6:]]
    assert [t.id for t in fleet.select(["twin-004", "twin-000..twin-001"])] == ["twin-004", *ids[:2]]
    assert shard_names(ids, 1) == ids


@pytest.mark.parametrize(("selection", "match"), [
    (["twin-009"], "twin 'twin-009' is not in the training fleet"),
    (["twin-000..twin-009"], "twin 'twin-009' is not in the training fleet"),
    (["twin-003..twin-001"], "runs backwards"),
])
def test_a_bad_selection_is_one_clear_error(selection: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_fleet(7, 0, 0.15, "default", 1, 1).select(selection)


# ------------------------------------------------------------------------------- issue 17, item 8
def test_yaml_1_2_floats_in_a_fleet_file_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text("twins:\n  - id: pole-07\n    friction_cart: 1e-3\n    masscart: 1E0\n  - id: '1e3'\n")
    fleet = load_fleet(path)
    assert fleet.train[0].friction_cart == 0.001 and fleet.train[0].masscart == 1.0
    again = tmp_path / "again.yaml"
    save_fleet(fleet, again)
    assert load_fleet(again) == fleet  # an id that reads as a number is quoted when written back
    path.write_text("twins:\n  - id: 1e3\n")
    with pytest.raises(ConfigError, match=r"twin id must be a string, got 1000\.0"):
        load_fleet(path)


def test_a_binary_fleet_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(b"\x00\x01\xff\xfe twins")
    with pytest.raises(ConfigError, match=r"fleet file .*fleet\.yaml is not UTF-8 text"):
        load_fleet(path)


def test_a_fleet_file_with_more_twins_than_a_run_takes_is_refused_before_they_are_built() -> None:
    with pytest.raises(ConfigError, match=r"'twins' lists 100,001 twins, more than the 100,000 a run takes"):
        fleet_from_data({"twins": [{"id": "x"}] * 100_001}, "f.yaml")
    with pytest.raises(ConfigError, match=r"'heldout' lists 10,001 twins, more than the 10,000"):
        fleet_from_data({"twins": [{"id": "x"}], "heldout": [{"id": "y"}] * 10_001}, "f.yaml")


def test_a_runs_stored_fleet_is_json_that_reads_back_exactly_as_yaml_too() -> None:
    import json

    import yaml

    from fedtwin.core.formats import SafeLoader
    from fedtwin.sim.fleet_files import fleet_to_json

    fleet = make_fleet(20, 3, 0.3, "hard", 2, 2)
    text = fleet_to_json(fleet)

    assert parse_fleet(text, "twins.yaml") == fleet
    assert yaml.load(text, Loader=SafeLoader) == json.loads(text)  # valid YAML, same values
    assert len(text.splitlines()) == 20 + 2 + 2 + 8  # one line per twin: readable
