# The one image every fedtwin workflow step runs: `fedtwin step ...` (ENTRYPOINT fedtwin).
#
# Build:  make image            (docker build -t fedtwin:0.1.0 .)
#         The tag is the package version in pyproject.toml, also the chart's appVersion (a test checks).
# Args:   BASE_IMAGE   slim Python base (default python:3.11-slim)
#         TORCH_SPEC   the torch requirement pip installs first (default torch==2.13.0). Point it at
#                      a CPU-only build to keep the image small, e.g. a local wheel file or a wheel URL
#                      of your CPU wheel mirror; an unqualified torch on Linux x86_64 pulls the CUDA build.
#         TORCH_PIP_ARGS  extra pip arguments for that one install (e.g. an index option naming your
#                      CPU wheel index); empty by default.
#         EXTRAS       fedtwin extras to install (default s3,privacy,fast; not `tracking`, which is the
#                      whole MLflow server: the image logs through the light client below).
#         MLFLOW_VERSION  the mlflow-skinny client (MlflowClient over the REST API, all that
#                      fedtwin/observe/tracking.py uses) pinned to the platform chart's MLflow server
#                      (`mlflow.image.tag` in charts/fedtwin-platform/values.yaml; a test checks).
# Layers go from least to most often changed: base, user, torch, dependencies (from pyproject.toml
# only), then the source, so editing code rebuilds only the last small layer.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_PIP_ARGS=""
ARG EXTRAS="s3,privacy,fast"
ARG MLFLOW_VERSION=3.9.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 fedtwin \
    && useradd --system --uid 10001 --gid fedtwin --home-dir /home/fedtwin --create-home \
       --shell /usr/sbin/nologin fedtwin

WORKDIR /opt/fedtwin

# hadolint ignore=DL3013
RUN pip install ${TORCH_PIP_ARGS} "${TORCH_SPEC}"

# Dependencies only: a stub package lets pip resolve pyproject.toml without the source.
COPY pyproject.toml README.md ./
RUN mkdir fedtwin && touch fedtwin/__init__.py \
    && pip install ".[${EXTRAS}]" "mlflow-skinny==${MLFLOW_VERSION}" \
    && pip uninstall --yes fedtwin \
    && rm -rf fedtwin build ./*.egg-info

COPY fedtwin ./fedtwin
# numba (extra `fast`) caches the compiled env step in NUMBA_CACHE_DIR: compiling it here spares
# every pod ~1 s; the directory belongs to the runtime user, as numba uses only a writable cache.
ENV NUMBA_CACHE_DIR=/opt/fedtwin/numba-cache
RUN pip install --no-deps . && rm -rf build ./*.egg-info \
    && python -m fedtwin.sim.cartpole_kernel \
    && mkdir -p "${NUMBA_CACHE_DIR}" && chown -R 10001:10001 "${NUMBA_CACHE_DIR}"

USER 10001:10001
WORKDIR /home/fedtwin
ENV HOME=/home/fedtwin
ENTRYPOINT ["fedtwin"]
CMD ["--help"]
