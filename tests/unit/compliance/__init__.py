"""Tests of gateway.compliance: the engine, the rule tables and the shipped rules."""
