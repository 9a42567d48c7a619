"""Dashboards as code: panel definitions, Grafana JSON, provisioning."""
