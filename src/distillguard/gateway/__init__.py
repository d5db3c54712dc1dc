"""The OpenAI-compatible gateway: the only door to the model.

`app` (the request flow and its wiring), `backends/` (the local engine, an upstream server),
`policy` (tiers), `ratelimit/` (memory and Redis), `metering` (usage rows, headers), `admin`
(the admin API) and `admin_client` (its HTTP client), `server` and `workers` (running it).
Importing the package imports none of them, so that using one room does not load the rest.
"""

__all__: list[str] = []
