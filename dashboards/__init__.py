"""Dashboards as code: panel definitions, Grafana JSON, provisioning, the embedded page.

* :mod:`dashboards.panels` — the panels (SQL with Grafana macros), one source of truth;
* :mod:`dashboards.grafana` — Grafana JSON, provisioning files, :func:`~dashboards.grafana.panel_url`;
* :mod:`dashboards.links` — an alert's dashboard, runbook and report links;
* :mod:`dashboards.runbooks` — the shipped runbooks, one per signal family;
* :mod:`dashboards.publish` — ``llmpulse dashboards publish`` through the Grafana HTTP API;
* :mod:`dashboards.macros` — the macro expander for the embedded store;
* :mod:`dashboards.render` and :mod:`dashboards.web` — the live page served by llmpulse;
* :mod:`dashboards.testing` — a store filled with given raw events, signals, alerts, deployments.
"""
