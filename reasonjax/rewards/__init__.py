"""Verifiers and reward functions (host side).

Submodules: `math` (GSM8K / MATH answer extraction and equivalence), `scoring` (weighted rewards
graded in worker processes with a deadline per completion), `sandbox` (model-written code in an
isolated subprocess), `reward_model` (a trained reward model's score as the reward, the verifier
kept as a metric). Import them directly: `from reasonjax.rewards import math as rmath`.
"""
