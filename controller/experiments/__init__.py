"""Experiments: A/B tests that stay valid however often you look, sample-ratio checks, on-device bandits.

Pure parts: ``assign`` (which arm a device runs), ``stats`` (per-device ratio
estimates and the always-valid confidence sequence), ``srm`` (the sample-ratio
check), ``bandit`` (Thompson weights with a floor), ``decide`` (one evaluation:
estimates, intervals, SRM, decision), ``state`` (the lifecycle machine).
With the database: ``evidence`` (per-device sums from ``experimentwindow``),
``service`` (creating an experiment, desired states), ``engine`` (the leader job).
"""
