# Diffusion service images. CPU (default; torch's CPU build, about 1 GB):
#   docker build -t diffusion-service .
# CUDA (PyPI's torch 2.13.0, built on CUDA 13: the host needs NVIDIA driver >= 580 and --gpus; for an older
# driver pass a CUDA 12 wheel index, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126):
#   docker build --build-arg DEVICE=cuda -t diffusion-service:cuda .
# (the compose files use these names; deploy/k8s names them diffusion-service and diffusion-service-cuda, by
# version, so that kustomize can point each at a registry: docs/deployment.md)
# Where PyTorch's index is unreachable, put the torch wheel in docker/wheels/ (used first when present):
#   cp /path/to/torch-2.13.0+cpu-cp311-*.whl docker/wheels/ && docker build -t diffusion-service .
# Run read-only with a tmpfs /tmp:  docker run --read-only --tmpfs /tmp -p 8000:8000 diffusion-service
# (HOME is /tmp: the service user has no home, and caches that libraries keep there, such as Triton's kernels on
# CUDA, need a writable one)

# -- dependencies: a layer of their own, rebuilt only when pyproject.toml or the torch source changes ----------
FROM python:3.11-slim AS deps
ARG DEVICE=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv
RUN python3 -m venv /srv/.venv
COPY docker/wheels/ /wheels/
# torch first: a local wheel, else the index asked for, else PyTorch's CPU index (CPU) or PyPI (CUDA)
RUN set -e; \
    if ls /wheels/torch-*.whl >/dev/null 2>&1; then /srv/.venv/bin/pip install /wheels/torch-*.whl; \
    elif [ -n "$TORCH_INDEX_URL" ]; then /srv/.venv/bin/pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL"; \
    elif [ "$DEVICE" = cpu ]; then /srv/.venv/bin/pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu; \
    else /srv/.venv/bin/pip install "torch==${TORCH_VERSION}"; fi; \
    rm -rf /wheels /srv/.venv/lib/python3.11/site-packages/torch/test /srv/.venv/lib/python3.11/site-packages/torch/include
# (torch's own tests and C++ headers are not needed to serve: 145 MB less; the image has no compiler for
# torch.compile anyway.) Then everything pyproject.toml names, through an empty stand-in for the package (the code comes later)
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py \
    && /srv/.venv/bin/pip install . \
    && /srv/.venv/bin/pip uninstall -y diffusion-service \
    && rm -rf app build ./*.egg-info

# -- the service: dependencies, models, then the code (a code change rebuilds only the last layer) -----------
FROM python:3.11-slim
ARG DEVICE=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/srv \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    DIFFUSION_DEVICE=${DEVICE} \
    DIFFUSION_HOST=0.0.0.0 \
    DIFFUSION_PORT=8000 \
    DIFFUSION_MODEL_STORE=/srv/model_store
RUN useradd --system --uid 10001 --no-create-home diffusion
WORKDIR /srv
COPY --from=deps /srv/.venv /srv/.venv
COPY model_store ./model_store
COPY app ./app
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/srv/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('DIFFUSION_PORT', '8000'), timeout=4)"]
# the API (with its embedded worker unless DIFFUSION_QUEUE_URL is set); a Redis worker: "python -m app.cli worker"
CMD ["/srv/.venv/bin/python", "-m", "app.cli", "serve"]
