# Diffusion service: CPU by default. For a CUDA image: docker build --build-arg DEVICE=cuda .
# (PyPI's Linux torch wheel carries its CUDA runtime; the host needs the NVIDIA driver and --gpus.)
FROM python:3.11-slim

ARG DEVICE=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    DIFFUSION_DEVICE=${DEVICE} \
    DIFFUSION_HOST=0.0.0.0 \
    DIFFUSION_PORT=8000 \
    DIFFUSION_MODEL_STORE=/srv/model_store

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY model_store ./model_store

# The README's install step, exactly.
RUN python3 -m venv .venv && .venv/bin/pip install -e .

RUN useradd --system --uid 10001 diffusion
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD [".venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD [".venv/bin/diffusion-serve"]
