"""The shared tenant strategies themselves: they must rarely throw a drawn set away, or the
properties using them fail Hypothesis's filter_too_much health check on unlucky seeds."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tenant_strategies import tenant_names, tenant_tables

from tenants import TenantSet
from tenants.model import name_problem

# Hypothesis fails a test (filter_too_much) when 50 test cases are filtered out before 10 are
# generated. At a quarter filtered out that needs 50 in at most 59 draws, vanishingly unlikely; with
# the names filtered out of st.text() it was over 70% here and failed about one run in 70.
MAX_FILTERED_SHARE = 0.25  # now from the unique destination slots only
EXAMPLES = 60  # generated tables, a second or two; 3-16% were filtered out over 80 random seeds


def test_tenant_tables_are_rarely_filtered_out_so_filter_too_much_cannot_fail_a_run() -> None:
    attempts = 0

    @st.composite
    def counted_tables(draw: st.DrawFn) -> list[dict[str, object]]:
        nonlocal attempts
        attempts += 1  # every test case that starts drawing, including those filtered out later
        return draw(tenant_tables())

    generated = 0

    # derandomize: the same test cases every run, so the share below is a fixed number, not a sample.
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.filter_too_much])  # measured here instead
    @given(counted_tables())
    def generate(tables: list[dict[str, object]]) -> None:
        nonlocal generated
        generated += 1
        TenantSet.from_dicts(tables)

    generate()
    assert generated == EXAMPLES
    filtered = attempts - generated
    assert filtered <= MAX_FILTERED_SHARE * attempts, f"{filtered} of {attempts} test cases filtered out"


@settings(max_examples=200, deadline=None)
@given(tenant_names)
def test_tenant_names_are_names_the_model_accepts(name: str) -> None:
    assert name_problem(name) is None
