"""The bank with its balances projection, for `cqrsctl --app bench.domain_cq_projection:app`.

Kept apart from domain_cq.app so the dispatch measurement never runs projection code.
"""

from __future__ import annotations

from cqrsctl.app import App

from .domain_cq import Account, balances_projection

app = App("bank")
app.aggregate(Account)
Balances = app.projection(balances_projection())
PROJECTION: str = Balances.name
