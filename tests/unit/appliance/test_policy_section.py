"""`[policy]`: the volumetric engine's box-wide knobs from the config file, each checked against its bounds
(policy.config.FILE_KEYS), and the engine `seawall run` builds runs with them."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from appliance.bench.policy import SyntheticDataplane
from appliance.config import parse_config
from appliance.service import Appliance
from policy.config import FILE_KEYS, PolicyConfig
from tenants import ConfigError
from tests.unit.appliance.test_appflood_wiring import _config


def _engine(config):
    """The policy engine `seawall run` builds from `config`, over the policy benchmark's synthetic dataplane."""
    app = Appliance(config)
    app.dataplane = SyntheticDataplane(100, 10, 0.0, 0, 1)
    return app.policy_engine(app.dataplane)


def test_every_file_key_is_an_engine_field_and_its_default_is_within_its_bounds():
    defaults = PolicyConfig()
    fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    for key, (kind, low, high) in FILE_KEYS.items():
        assert key in fields, key
        value = getattr(defaults, key)
        assert value is None and kind == "share_or_false" or low <= value <= high, (key, value)


def test_the_engine_runs_with_the_knobs_of_the_file(tmp_path):
    config = _config(tmp_path, "pcap_retention_days = 7\n[policy]\nquiet_s = 12\nhold_down_s = 60\nconfirm_s = 1.5\n"
                               "fast_confirm_confidence = false\ncarpet_min_destinations = 16\nwarmup_s = 120\n")
    assert config.policy == {"quiet_s": 12.0, "hold_down_s": 60.0, "confirm_s": 1.5, "fast_confirm_confidence": None,
                             "carpet_min_destinations": 16, "warmup_s": 120.0}
    engine = _engine(config)
    got = engine.config
    assert (got.quiet_s, got.hold_down_s, got.confirm_s, got.fast_confirm_confidence) == (12.0, 60.0, 1.5, None)
    assert (got.carpet_min_destinations, got.warmup_s, got.pcap_retention_days) == (16, 120.0, 7)
    assert got.k_sigma == PolicyConfig().k_sigma                        # not given: the engine's default
    assert engine.appflood.config.warmup_s == 120.0                     # and the application-layer detector's pace
    knobs = engine.status()["knobs"]                                    # what the status says it runs with
    assert set(knobs) == set(FILE_KEYS) and knobs["quiet_s"] == 12.0 and knobs["fast_confirm_confidence"] is None


def test_no_policy_section_leaves_the_engine_at_its_defaults(tmp_path):
    config = _config(tmp_path)
    assert config.policy == {}
    assert _engine(config).config == PolicyConfig()


@pytest.mark.parametrize(("text", "message"), [
    ("quiet = 10\n", "[policy] quiet: unknown key (did you mean 'quiet_s'?)"),
    ("quiet_s = 0\n", "[policy] quiet_s: must be between 1 and 3600, got 0"),
    ("quiet_s = \"30s\"\n", "[policy] quiet_s: expected a number of seconds, got '30s'"),
    ("hold_down_s = true\n", "[policy] hold_down_s: expected a number of seconds, got True"),
    ("confirm_s = 600\n", "[policy] confirm_s: must be between 0 and 300, got 600"),
    ("carpet_min_destinations = 8.5\n", "[policy] carpet_min_destinations: expected an integer, got 8.5"),
    ("fast_confirm_confidence = 0\n", "[policy] fast_confirm_confidence: must be within (0, 1], or false, got 0"),
    ("fast_confirm_confidence = true\n", "[policy] fast_confirm_confidence: expected a number in (0, 1] or false"),
    ("update_interval_s = 0.5\n", "[policy] update_interval_s: must be between 1 and 3600, got 0.5"),
    ("legit_tolerance = 0.9\n", "[policy] legit_tolerance: must be between 0 and 0.5, got 0.9"),
    ("rate_limit_floor_pps = 0\n", "[policy] rate_limit_floor_pps: must be between 1 and 1000000000, got 0"),
])
def test_a_bad_knob_is_named_with_its_bounds(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config("[policy]\n" + text)
    assert any(message in problem for problem in err.value.problems), err.value.problems


def test_every_bad_knob_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_config("[policy]\nquiet_s = -1\nk_sigma = 99\nmargin = \"wide\"\n")
    assert [p.split(":")[0] for p in err.value.problems] == ["[policy] quiet_s", "[policy] k_sigma", "[policy] margin"]


def test_the_readme_lists_every_knob_with_the_engines_default():
    readme = (pathlib.Path(__file__).parents[3] / "README.md").read_text()
    table = readme[readme.index("\n[policy]"):]
    table = table[:table.index("```")]
    config = parse_config(table)
    assert set(config.policy) == set(FILE_KEYS)
    defaults = PolicyConfig()
    assert {key: getattr(defaults, key) for key in FILE_KEYS} == config.policy
