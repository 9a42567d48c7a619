"""Dashboards as code: panel definitions, Grafana JSON, provisioning, the embedded page.

* :mod:`llmpulse.dashboards.panels` — the panels (SQL with Grafana macros), one source of truth;
* :mod:`llmpulse.dashboards.grafana` — Grafana JSON, provisioning files, :func:`~llmpulse.dashboards.grafana.panel_url`;
* :mod:`llmpulse.dashboards.links` — an alert's dashboard, runbook and report links;
* :mod:`llmpulse.dashboards.runbooks` — the shipped runbooks, one per signal family;
* :mod:`llmpulse.dashboards.publish` — ``llmpulse dashboards publish`` through the Grafana HTTP API;
* :mod:`llmpulse.dashboards.macros` — the macro expander for the embedded store;
* :mod:`llmpulse.dashboards.render` and :mod:`llmpulse.dashboards.web` — the live page served by llmpulse;
* :mod:`llmpulse.dashboards.testing` — a store filled with given raw events, signals, alerts, deployments.
"""
