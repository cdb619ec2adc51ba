"""The lab's static definitions: example config, tenant plan, reference scenario, DNS answers."""

from __future__ import annotations

import ipaddress
import pathlib
import struct
import tomllib

import pytest

from appliance.lab import TENANTS, Lab, lab_config
from appliance.lab.scenario import REFERENCE, load_scenario, parse_scenario
from appliance.lab.services import dns_answer
from appliance.lab.traffic import (
    NewClientAddresses,
    TrafficProfile,
    dns_query,
    reported_until,
    seconds_within,
    split_by_windows,
)

EXAMPLE = pathlib.Path(__file__).resolve().parents[3] / "appliance" / "examples" / "lab.toml"
DOC_RANGES = [ipaddress.ip_network(n) for n in
              ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def test_example_config_is_lab_config_of_the_default_lab():
    with EXAMPLE.open("rb") as handle:
        assert tomllib.load(handle) == lab_config("sw")


def test_lab_config_follows_the_lab_name():
    config = lab_config("t1")
    assert config["appliance"]["external"] == "t1-ext" and config["appliance"]["internal"] == "t1-int"
    assert [t["id"] for t in config["tenants"]] == ["alpha", "beta", "gamma"]
    assert any("allow" in t and "deny" in t for t in config["tenants"])


@pytest.mark.parametrize("name", ["", "Sw", "a-b", "toolongname1", "1abc"])
def test_bad_lab_names_are_refused(name):
    with pytest.raises(ValueError, match="lab name"):
        Lab(name)


def test_servers_are_deterministic_and_inside_their_tenant_prefixes():
    lab = Lab("sw")
    assert len(lab.servers) >= 8
    assert len({s.mac for s in lab.servers}) == len(lab.servers)
    assert Lab("sw").servers == lab.servers
    for server in lab.servers:
        tenant = server.tenant_spec
        assert ipaddress.ip_address(server.ipv4) in ipaddress.ip_network(tenant.ipv4)
        assert ipaddress.ip_address(server.ipv6) in ipaddress.ip_network(tenant.ipv6)
        assert server.namespace == f"sw-{server.name}"
    assert lab.game_server.tenant == "alpha"
    for tenant in TENANTS:
        for prefix in (tenant.ipv4, tenant.ipv6):
            assert any(ipaddress.ip_network(prefix).subnet_of(r) for r in DOC_RANGES
                       if r.version == ipaddress.ip_network(prefix).version)


def test_reference_scenario_is_the_documented_one():
    scenario = load_scenario(REFERENCE)
    syn, udp = scenario.attacks
    assert (syn.vector, syn.pps, syn.duration_s, syn.target) == ("syn", 200_000, 60, "game")
    assert (udp.vector, udp.pps, udp.dport) == ("udp", 5000, 28960)
    assert scenario.legit.game_pps == 800
    assert syn.spec(Lab("sw")).target == Lab("sw").game_server.ipv4


@pytest.mark.parametrize("data,message", [
    ({"scenario": {"name": "x", "duration_s": 10}, "attacks": [{"vector": "syn", "target": "game",
                                                               "duration_s": 20, "pps": 1}]}, "within"),
    ({"scenario": {"name": "x", "duration_s": 10}, "attacks": [{"vector": "nope", "target": "game",
                                                               "duration_s": 1, "pps": 1}]}, "unknown"),
    ({"scenario": {"name": "x", "duration_s": 10}, "attacks": [{"vector": "syn", "target": "game",
                                                               "duration_s": 1, "pps": "fast"}]}, "pps"),
    ({"scenario": {"name": "x", "duration_s": 10}, "attacks": [{"vector": "syn", "target": "game",
                                                               "duration_s": 1, "pps": 1, "color": 1}]},
     "unknown keys"),
    ({"scenario": {"duration_s": 10}}, "scenario.name: missing"),
    ({"scenario": {"name": "x", "duration_s": 10}, "legit": {"game_pps": -1}}, "legit"),
])
def test_bad_scenarios_name_the_key_at_fault(data, message):
    with pytest.raises(ValueError, match=message):
        parse_scenario(data)


def test_dns_service_answers_a_and_aaaa_and_ignores_garbage():
    answer = dns_answer(dns_query(0x1234, "www.alpha.example.com"), "198.51.100.10", "2001:db8:a::10")
    ident, flags, qd, an = struct.unpack("!HHHH", answer[:8])
    assert (ident, flags & 0x8000, qd, an) == (0x1234, 0x8000, 1, 1)
    assert answer.endswith(bytes([198, 51, 100, 10]))
    aaaa = bytearray(dns_query(7, "x.example"))
    aaaa[-3] = 28
    assert dns_answer(bytes(aaaa), "198.51.100.10", "2001:db8:a::10").endswith(
        ipaddress.IPv6Address("2001:db8:a::10").packed)
    assert dns_answer(b"\x00" * 5, "198.51.100.10", "2001:db8:a::10") is None
    assert dns_answer(answer, "198.51.100.10", "2001:db8:a::10") is None   # responses are not answered


# -- issue 19: new TCP clients (a new source address each) in the lab's legitimate traffic ----------

def test_issue19_reference_scenario_has_new_clients_at_the_attacked_web_port():
    assert load_scenario(REFERENCE).legit.new_clients_per_s == 2


@pytest.mark.parametrize("value,message", [
    (-1, "legit: new_clients_per_s must be 0..50"),
    (51, "legit: new_clients_per_s must be 0..50"),
    ("two", "legit.new_clients_per_s: expected"),
    (True, "legit.new_clients_per_s: expected"),
])
def test_issue19_bad_new_clients_per_s_names_the_key(value, message):
    with pytest.raises(ValueError, match=message):
        parse_scenario({"scenario": {"name": "x", "duration_s": 10}, "legit": {"new_clients_per_s": value}})


def test_a_misspelt_legit_key_is_refused_not_taken_as_its_default():
    with pytest.raises(ValueError, match="legit: unknown keys new_client_per_s"):
        parse_scenario({"scenario": {"name": "x", "duration_s": 10}, "legit": {"new_client_per_s": 2}})


def test_issue19_traffic_profile_validates_new_clients_per_s():
    TrafficProfile(new_clients_per_s=0).validate()
    TrafficProfile(new_clients_per_s=2.5).validate()
    with pytest.raises(ValueError, match="new_clients_per_s"):
        TrafficProfile(new_clients_per_s=-0.5).validate()


def test_issue19_outcomes_split_by_the_seconds_an_attack_was_sending():
    def second(n, sent, ok):
        return {"type": "second", "second": n, "services": {"new-tcp": {"sent": sent, "ok": ok}}}
    # Traffic started at t=1000; the attack sent from 1002.2 to 1004.9: the records of seconds 3, 4
    # and 5 (middles 1002.5, 1003.5, 1004.5) are during it, seconds 1, 2 and 6 outside.
    seconds = [second(1, 2, 2), second(2, 2, 2), second(3, 2, 1), second(4, 2, 2), second(5, 2, 2),
               second(6, 2, 2)]
    split = split_by_windows(seconds, 1000.0, [(1002.2, 1004.9)])
    assert split["during"]["new-tcp"] == {"sent": 6, "ok": 5, "success_rate": 0.8333}
    assert split["outside"]["new-tcp"] == {"sent": 6, "ok": 6, "success_rate": 1.0}


def test_seconds_of_a_running_run_are_placed_by_their_own_started_at():
    # A run that started at t=1000 and has reported 6 seconds: complete up to 1006; a window from
    # 1002.2 to 1004.9 holds the records of seconds 3, 4 and 5 (middles 1002.5, 1003.5, 1004.5).
    seconds = [{"type": "second", "second": n, "started_at": 1000.0, "services": {}} for n in range(1, 7)]
    assert reported_until([]) == 0.0
    assert reported_until(seconds) == 1006.0
    assert [r["second"] for r in seconds_within(seconds, 1002.2, 1004.9)] == [3, 4, 5]
    assert seconds_within(seconds, 1006.0, 1010.0) == []


def test_issue19_new_client_addresses_are_never_reused_and_stay_in_the_client_ranges():
    pool = NewClientAddresses()
    taken = [pool.next_address() for _ in range(400)]    # more than the /25 holds: IPv6 takes over
    assert len(set(taken)) == len(taken)
    for interface in taken:
        address = ipaddress.ip_interface(interface)
        assert address.network in (ipaddress.ip_network("192.0.2.0/25"), ipaddress.ip_network("2001:db8:ffff::/64"))
        assert str(address.ip) not in ("192.0.2.10", "192.0.2.1", "2001:db8:ffff::10", "2001:db8:ffff::1")
    assert sum(":" not in i for i in taken) == len(range(11, 127))
