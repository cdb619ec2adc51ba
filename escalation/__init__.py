"""Upstream escalation: BGP FlowSpec and RTBH through a real BGP speaker (ExaBGP).

    config.py      the [bgp] and [escalation] tables: parsed, validated, nothing applied on error
    routes.py      signature (dataplane rule) -> FlowSpec route; attacked address -> RTBH host route
    ladder.py      the decisions: when to announce FlowSpec, when RTBH, when to withdraw (pure)
    speaker.py     the adapter: ExaBGP in a child process, its text API, session state, restarts
    relay.py       ExaBGP's API process (stdio <-> Seawall's Unix socket), standard library only
    controller.py  the ladder carried out by the speaker in the running appliance, with events; reloads

Layering: imports dataplane.api/constants, tenants and policy.events; imported by appliance/
(wiring) and securewatch/ (kinds, the refusal type); never imports either.
"""
