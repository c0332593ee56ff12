"""Data sets used to drive and evaluate continual learning (read from local files, no downloads)."""
