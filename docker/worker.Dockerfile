# The GPU worker: `farm worker` on a CUDA base, with a CUDA build of torch and seedfarm[worker]
# installed from this checkout at the versions the test suite passed with (constraints/worker.txt).
# Build from the repo root:  docker build -f docker/worker.Dockerfile -t seedfarm-worker .
# Run (compose.yaml does this):  models read-only at /models, the cache and outputs as volumes.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
FROM ${CUDA_IMAGE}

# torch's CUDA wheels carry their own CUDA libraries; the base brings the driver hooks
# (NVIDIA_VISIBLE_DEVICES, NVIDIA_DRIVER_CAPABILITIES) that the NVIDIA container toolkit reads.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/seedfarm \
    PATH=/opt/seedfarm/bin:$PATH

# Ubuntu's python3 (3.12); the distribution's own versions of it are the point, so not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/seedfarm

COPY constraints/worker.txt constraints/no-deps.txt /src/constraints/
# The CUDA build first, at the version of the constraints; seedfarm's install then keeps it.
RUN pip install --index-url "${TORCH_INDEX}" \
        "torch==$(sed -n 's/^torch==//p' /src/constraints/worker.txt)"

COPY pyproject.toml setup.py README.md /src/
COPY farm /src/farm
COPY worker /src/worker
COPY configs /src/configs
# no-deps.txt: spandrel (upscaler models) without the torchvision it declares, which would replace
# the CUDA torch
RUN pip install -c /src/constraints/worker.txt "/src[worker]" \
    && pip install --no-deps -r /src/constraints/no-deps.txt \
    && rm -rf /src \
    && useradd --create-home --uid 1000 farm \
    && mkdir -p /models /cache /outputs \
    && chown farm:farm /cache /outputs

# /models: the A1111/ComfyUI models folder, mounted read-only. /cache: hashes and any hub
# downloads. /outputs: the folder store (or give FARM_STORE=s3://...).
ENV FARM_MODELS=/models \
    FARM_STORE=/outputs \
    FARM_CACHE_DIR=/cache \
    HF_HOME=/cache/huggingface
VOLUME ["/cache", "/outputs"]
USER 1000:1000
WORKDIR /home/farm
# SIGTERM is Celery's warm shutdown: the batch in progress is stored, the rest handed back.
STOPSIGNAL SIGTERM
ENTRYPOINT ["farm"]
CMD ["worker"]
