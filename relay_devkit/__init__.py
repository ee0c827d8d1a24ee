"""The development kit: the APNs and GMS simulators, the simulated iPhone, the demo, an embedded
Valkey, development mode (`serve --dev`) and the benchmark command.

Nothing here is imported by the relay's production processes (`api`, `worker`, `serve` without
--dev); the production image does not contain this package (see the Dockerfile and
tests/deploy/test_boundary.py). The relay's CLI imports it lazily for the commands that need it.
"""
