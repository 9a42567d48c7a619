"""The Faust application: ingest, sink and signal agents. Wiring, not maths."""
