"""The fault suite (``make faults``): seeded kill -9, resets, outages, disk full and HSM loss.

Two real gateways (SoftHSM tokens, mutual-TLS gRPC on loopback, real daemon processes)
exchange files of random sizes with passports while faults are injected on a schedule drawn
from one seed (:mod:`tests.faults.plan`); after each, the transfer is sent again with the
same passport until it is delivered (:mod:`tests.faults.driver`). At the end
(:mod:`tests.faults.checks`) every transfer must have been delivered exactly once and fetch
byte-identical, nothing may be left unfinished or partial, and both audit logs must verify.

Not collected by ``pytest tests``: no module here is named ``test_*``. It runs as
``python -m tests.faults --seed N --transfers N`` (``make faults SEED=N TRANSFERS=N``); a
short run of it is ``tests/system/test_fault_suite_smoke.py``. It mounts a tmpfs, so it
runs as root.
"""
