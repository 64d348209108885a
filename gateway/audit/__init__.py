"""Tamper-evident audit trail: Merkle log, checkpoints and witnessing."""
