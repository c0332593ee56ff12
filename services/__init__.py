"""Perennial deployables: one folder per service."""
