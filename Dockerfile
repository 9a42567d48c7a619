# syntax=docker/dockerfile:1
# Multi-stage: build wheels once, then small runtime images that run as a
# non-root user. Targets:
#   runtime  stream workers, notifier, simulator (llmpulse[server])
#   gpu      retrain worker and model server (llmpulse[all]; CUDA libraries
#            come from the nvidia-* wheels torch depends on, the driver from
#            the NVIDIA container toolkit on the host)

ARG PYTHON=python:3.11-slim-bookworm

FROM ${PYTHON} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY llmpulse ./llmpulse
COPY streams ./streams
COPY detectors ./detectors
COPY retrain ./retrain
COPY dashboards ./dashboards
RUN python -m venv /opt/server && /opt/server/bin/pip install ".[server]"
RUN python -m venv /opt/all && /opt/all/bin/pip install ".[all]"

FROM ${PYTHON} AS base
RUN useradd --system --uid 10001 --create-home --home-dir /home/llmpulse llmpulse \
    && mkdir -p /app /data/registry \
    && chown -R llmpulse:llmpulse /app /data
ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LLMPULSE_DATA_DIR=/data
WORKDIR /app

FROM base AS runtime
COPY --from=build /opt/server /opt/server
ENV PATH=/opt/server/bin:$PATH
USER llmpulse
EXPOSE 8080
CMD ["llmpulse", "up"]

FROM base AS gpu
COPY --from=build /opt/all /opt/all
ENV PATH=/opt/all/bin:$PATH
USER llmpulse
EXPOSE 8700
CMD ["python", "-m", "llmpulse.retrain.serving", "--host", "0.0.0.0", "--port", "8700"]
