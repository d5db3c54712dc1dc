"""The operator console: accounts, rings, usage, evidence and alerts in the browser.

Served by the admin listener at /console (`AdminApi.mount`), so only where the admin API is
reachable (by default 127.0.0.1). Server-rendered HTML (Jinja2) with inline SVG charts and one
small script, every asset served from the package; every page reads without JavaScript.

- `console.py`: settings, signing in and out, the guard of every page (session, role, CSRF);
- `auth.py`: sessions, failed-login limits and CSRF tokens, in the shared store;
- `actions.py`: operators' actions, by name, in the audit chain;
- `snapshot.py`, `watch.py`: the accounts as pages read them; risk over time; alerts;
- `jobs.py`, `worker.py`: audits and verifications in a separate process;
- `pages_accounts.py`, `pages_evidence.py`, `pages_usage.py`: the pages;
- `charts.py`, `filters.py`, `templates/`, `static/`: how they look.
"""

from __future__ import annotations

from distillguard.gateway.console.auth import AuthSettings
from distillguard.gateway.console.console import Console, ConsoleConfig

__all__ = ["AuthSettings", "Console", "ConsoleConfig"]
