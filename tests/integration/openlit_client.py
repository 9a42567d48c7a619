"""Two chat calls through the real ``openai`` client under OpenLIT's auto-instrumentation.

Run by ``test_openlit_stack.py`` with the Python of a separate virtualenv (OpenLIT
pins ``openai<3``, the project's environment has ``openai`` 3): imports nothing
of llmpulse. ``python openlit_client.py <otlp endpoint> <stub base URL> <service
name> <on|off> <question>`` makes one call with message capture on or off (OpenLIT
reads it once, in ``openlit.init``), exports every span and prints the response id.
"""

from __future__ import annotations

import sys


def main(endpoint: str, base_url: str, service: str, capture: str, question: str) -> int:
    import openai
    import openlit
    from opentelemetry import trace

    openlit.init(otlp_endpoint=endpoint, application_name=service, service_name=service,
                 capture_message_content=capture == "on", disable_metrics=True,
                 disable_batch=True)
    client = openai.OpenAI(base_url=base_url, api_key="test-key")
    answer = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": question}])
    provider = trace.get_tracer_provider()
    flushed = provider.force_flush()  # type: ignore[attr-defined]
    print(answer.id, flushed)
    return 0 if flushed else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:6]))
