"""Verifiers and reward functions (host side): answer grading, the code sandbox."""
