"""The pieces of `scripts/test_batch_processing.py`, the voicebus benchmark.

Pure logic (no sockets, no models; unit-tested in tests/unit/test_benchmark_logic.py): `stats`
(percentiles, Poisson schedules, histogram deltas, rates, ratios) and `report` (the JSON
report's contract check and the printed tables). The measuring: `workload` (the clips and
texts), `engine` (batch tables, raw engines in process), `load` (closed- and open-loop load
generators over any `Connection`), `bus` (voicebus as the system under test), `peer` (the
same engines behind Ray Serve), `suite` (what runs in which order) and `plot`.
"""
