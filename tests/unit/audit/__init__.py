"""Unit tests for the audit trail."""
