"""Development tooling for xbgw: not part of the product, never imported by the daemon.

* ``devtools.provision`` -- SoftHSM tokens, a throw-away demo CA, provisioning gateways and a
  passport issuer, passports through ``xbgw passport issue``, and ``DaemonProcess``
  (``xbgw serve`` as a child process, ready on ``READY=1``, stopped by PID);
* ``devtools.pair``      -- the two demo gateways (lingang CN-SH, frankfurt EU-DE) provisioned,
  started and stopped together: the one fixture of the demo, the system tests and the
  benchmark;
* ``devtools.demo``      -- ``make demo`` (``python -m devtools.demo``).

Run from the repository root (the Makefile does): ``devtools`` is not an installed package.
"""
