# llmcluster in a small image: the package and its four runtime dependencies, a non-root user.
# The base is a build argument so the image can be built from a local base without a registry.
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY llmcluster ./llmcluster
RUN python3 -m pip install . && rm -rf /src \
    && useradd --create-home --uid 10001 llmc
USER llmc
WORKDIR /home/llmc
ENTRYPOINT ["llmcluster"]
CMD ["--help"]
