"""Hypothesis profiles: "dev" by default, "ci" for the thorough, reproducible run, "deep" for a
long randomized one.

Select with the environment variable ``HYPOTHESIS_PROFILE``. No timing thresholds anywhere:
the core is pure, and a slow machine must not turn into a flaky test.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=100, stateful_step_count=40, deadline=None)
settings.register_profile(
    "ci",
    max_examples=300,
    stateful_step_count=60,
    derandomize=True,
    deadline=None,
    print_blob=True,
)
# "deep": a nightly-style run. A random seed each time (unlike "ci", which is derandomized so
# that every CI run tries the same examples) and many more examples and steps.
settings.register_profile(
    "deep",
    max_examples=3000,
    stateful_step_count=200,
    derandomize=False,
    deadline=None,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The suite's jobs run the interpreter of this checkout's virtualenv, which (as root under
# pyenv) other users cannot reach, and their work dirs sit under pytest's private temp dirs: so
# jobs run as the node's user by default here. tests/test_job_users.py runs nodes with
# `job_user = "auto"` (a user per job) explicitly.
os.environ.setdefault("HYPHA_JOB_USER", "node")
