"""Everything a policy file needs, in one import: ``from checkid.engine.policyapi import *``."""
from __future__ import annotations

from checkid.engine.checks.prescreen import ListResult, Verdict
from checkid.engine.checks.registry import Rating, Record, RegistryOutcome, RegistryResult
from checkid.engine.checks.reputation import Score
from checkid.engine.context import Auth, Context
from checkid.engine.decision import Action, Decision
from checkid.engine.result import Result

__all__ = ["Action", "Auth", "Context", "Decision", "ListResult", "Rating", "Record",
           "RegistryOutcome", "RegistryResult", "Result", "Score", "Verdict"]
