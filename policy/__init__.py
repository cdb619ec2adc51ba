"""Policy engine: counters → rates → baselines → detection → classification → signatures → rules,
and the incident lifecycle. See `policy.engine.PolicyEngine` for the whole tick.

Modules: `rates` (counter deltas by address), `baseline` (EWMA per second),
`detect` (per destination and per tenant, carpet bombing), `classify` (vectors
with confidence), `signature` (narrowest rule), `incidents` (start/update/end,
hold-down), `pcap` (evidence), `packets` (sample parsing, rule matching),
`config` (engine knobs), `bench` (timing at appliance scale), `events` (bus), `heap` (the
tick's large arrays reuse the last tick's memory), `native` (the per-destination passes of
rates, detection and learning in C, `native.c`, compiled at the first tick).
"""
