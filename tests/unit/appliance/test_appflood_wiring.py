"""Issue 15, integration: `seawall run` gives the engine a dataplane with connection accounting and
a detector whose caps are the dataplane's map sizes, its knobs reachable from `[appflood]`; the
policy benchmark's synthetic dataplane has the flow methods, so `seawall bench policy` measures the
tick with the application-layer detector on."""

from __future__ import annotations

import pytest

from appliance.bench.policy import SyntheticDataplane, run_benchmark, synthetic_tenant_spec
from appliance.config import parse_config
from appliance.service import Appliance
from dataplane.constants import BLOCKED_SOURCES_MAX, SOURCE_LIMITS_MAX
from dataplane.sizing import FlowSizes
from policy.appflood import AppFloodConfig
from tenants import ConfigError


def _config(tmp_path, extra: str = ""):
    return parse_config(f'[appliance]\nstate_dir = "{tmp_path / "state"}"\nbpffs = "{tmp_path / "bpffs"}"\n{extra}')


def test_issue15_detector_caps_are_the_dataplanes_map_sizes():
    assert AppFloodConfig().max_limits == SOURCE_LIMITS_MAX and AppFloodConfig().max_blocked == BLOCKED_SOURCES_MAX
    small = FlowSizes(source_limits_max=16, blocked_sources_max=100)
    cfg = AppFloodConfig.for_dataplane(small, warmup_s=20.0)
    assert (cfg.max_limits, cfg.max_blocked, cfg.warmup_s) == (16, 100, 20.0)
    assert cfg.max_blocked_per_tenant == 100          # never more per tenant than in all
    assert AppFloodConfig.for_dataplane(small, max_limits=8).max_limits == 8
    with pytest.raises(ValueError, match="max_limits: 1024 exceeds the dataplane's source_limits_max"):
        AppFloodConfig.for_dataplane(small, max_limits=1024)
    with pytest.raises(ValueError, match="warmup: unknown key"):
        AppFloodConfig.for_dataplane(None, warmup=3)


def test_issue15_flow_sizes_and_appflood_knobs_come_from_the_config_file(tmp_path):
    config = _config(tmp_path, "source_limits_max = 64\nblocked_sources_max = 512\n"
                               "[appflood]\nwarmup_s = 20\nblock_factor = 3.0\n")
    assert config.appliance.flow_sizes == FlowSizes(source_limits_max=64, blocked_sources_max=512)
    assert config.appflood == {"warmup_s": 20, "block_factor": 3.0}
    app = Appliance(config)
    app.dataplane = SyntheticDataplane(100, 10, 0.0, 0, 1)
    engine = app.policy_engine(app.dataplane)
    cfg = engine.appflood.config
    assert (cfg.max_limits, cfg.max_blocked, cfg.warmup_s, cfg.block_factor) == (64, 512, 20.0, 3.0)
    # Not given: the volumetric baselines' pace, as the engine's own default.
    assert cfg.half_life_s == engine.config.half_life_s and cfg.k_sigma == engine.config.k_sigma


@pytest.mark.parametrize(("text", "message"), [
    ("[appflood]\nmax_limits = 5000\n", "[appflood] max_limits: 5000 exceeds the dataplane's source_limits_max (1024)"),
    ("[appflood]\nwarmup = 20\n", "[appflood] warmup: unknown key"),
    ("[appflood]\nk_sigma = \"four\"\n", "[appflood] k_sigma: expected a number"),
    ("[appflood]\nsource_quantile = 1.5\n", "[appflood] source_quantile: must be within (0, 1)"),
    ("[appliance]\nsource_limits_max = 0\n", "[appliance] source_limits_max: must be between 1 and 65536"),
    ("[appliance]\nflow_table_entries = \"big\"\n", "[appliance] flow_table_entries"),
])
def test_issue15_bad_flow_sizes_and_appflood_knobs_name_the_field(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert any(message in p for p in err.value.problems), err.value.problems


def test_issue15_engine_over_the_bench_dataplane_runs_the_appflood_detector(tmp_path):
    from policy.engine import PolicyEngine  # noqa: PLC0415
    from policy.events import EventBus  # noqa: PLC0415

    dp = SyntheticDataplane(200, 20, 0.0, 10, 1)
    engine = PolicyEngine(dp, synthetic_tenant_spec(200, 20, False), EventBus(), tmp_path, tick=1.0)
    assert engine.appflood.config.max_limits == dp.flow_sizes.source_limits_max
    for t in range(1, 4):
        dp.advance(1.0)
        engine.tick(float(t))
    assert engine.appflood.disabled is None
    assert len(engine.appflood.servers) == 200      # every synthetic destination is a server with baselines


def test_issue15_policy_benchmark_measures_the_tick_with_the_detector_on():
    figures = run_benchmark(destinations=2000, tenants=200, ticks=3, warmup_ticks=3, attacked=0, samples_per_tick=50)
    assert figures["appflood_disabled"] is None and figures["appflood_servers"] > 0
    assert "appflood" in figures["stage_ms_median"]
