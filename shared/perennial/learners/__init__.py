"""Continual learners behind the `perennial.learner` interface."""
