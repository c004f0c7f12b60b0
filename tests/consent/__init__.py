"""Tests of the pure consent core (labels, purposes, parsing, evaluation)."""
