# The coordinator: `farm submit`, `farm status`, the review page. No torch: a small image.
# Build from the repo root:  docker build -f docker/coordinator.Dockerfile -t seedfarm-coordinator .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

COPY constraints/worker.txt /src/constraints/worker.txt
COPY pyproject.toml setup.py README.md /src/
COPY farm /src/farm
COPY worker /src/worker
COPY configs /src/configs
RUN pip install -c /src/constraints/worker.txt /src \
    && rm -rf /src \
    && useradd --create-home --uid 1000 farm \
    && mkdir -p /outputs \
    && chown farm:farm /outputs

ENV FARM_STORE=/outputs
VOLUME ["/outputs"]
USER 1000:1000
WORKDIR /home/farm
EXPOSE 8188
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8188/healthz', timeout=4)"]
ENTRYPOINT ["farm"]
CMD ["review", "--host", "0.0.0.0", "--port", "8188"]
