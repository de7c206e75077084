"""The result of an authentication method: RFC 7208's results, shared by SPF and the others."""
from __future__ import annotations

import enum


class Result(str, enum.Enum):
    """A method's result. The values are upper case (``Authent:`` and the decision's
    per-method results show them so); :data:`SPELLING` holds the RFC 7208 / RFC 8601 ones."""

    PASS = "PASS"
    FAIL = "FAIL"
    SOFTFAIL = "SOFTFAIL"
    NEUTRAL = "NEUTRAL"
    NONE = "NONE"
    TEMPERROR = "TEMPERROR"
    PERMERROR = "PERMERROR"


#: each result as RFC 7208 and RFC 8601 spell it (``spf=pass``), made once, not per decision
SPELLING: dict[Result, str] = {r: r.value.lower() for r in Result}

#: which result speaks for the whole when several methods ran and none passed: the lower the
#: rank, the more it says (a pass, then a failure that may go away, then a real one ...)
RANK: dict[Result, int] = {r: i for i, r in enumerate((Result.PASS, Result.TEMPERROR, Result.FAIL, Result.SOFTFAIL,
                                                        Result.NEUTRAL, Result.PERMERROR, Result.NONE))}
