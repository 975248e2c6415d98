# llmcluster in a small image: the package and its runtime dependencies, a non-root user.
# BASE is a build argument so the image builds from a local base without a registry (the compose
# smoke test imports a debootstrapped Debian); PIP_OPTIONS lets such a build stay offline
# ("--no-index --find-links DIR" when the base holds the dependencies and DIR a setuptools wheel).
ARG BASE=python:3.12-slim
FROM ${BASE}
ARG PIP_OPTIONS=
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/llmcluster/bin:$PATH
COPY pyproject.toml README.md /src/
COPY llmcluster /src/llmcluster
RUN python3 -m venv --system-site-packages /opt/llmcluster \
    && /opt/llmcluster/bin/python -m pip install --quiet ${PIP_OPTIONS} /src \
    && rm -rf /src \
    && useradd --create-home --uid 10001 llmc
USER llmc
WORKDIR /home/llmc
ENTRYPOINT ["llmcluster"]
CMD ["--help"]
