"""Alert rules shipped with llmpulse: ``default.yaml`` (see ``docs/rules.md``)."""
