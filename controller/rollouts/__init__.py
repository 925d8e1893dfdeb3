"""Rollouts: staged canaries judged against matched baseline devices, shadow first, automatic rollback.

``state`` (the stage machine, pure), ``plan`` (stages and thresholds), ``analysis``
(the statistics, pure), ``selection`` (which devices, pure), ``evidence`` (what a
stage observed, from the database), ``engine`` (events applied, devices assigned,
the leader job), ``service`` (creating a rollout), ``job`` (wiring into the app).
"""
