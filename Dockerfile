# syntax=docker/dockerfile:1
# The prediction server's image: `docker build -t churnops .`, then
#   docker run -p 8000:8000 -v "$PWD/.churnops:/data" churnops serve
# Two stages: the first installs the locked dependencies with uv (no dev tools, no extras),
# the second carries only the virtual environment and runs as an unprivileged user.

ARG PYTHON_VERSION=3.11
# Any image with that Python and pip (`--build-arg BASE_IMAGE=...`, as the image test does offline).
ARG BASE_IMAGE=python:${PYTHON_VERSION}-slim

FROM ${BASE_IMAGE} AS build
ARG UV_VERSION=0.13.9
ENV UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /app
# Dependencies first (a layer that changes only with the lock), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY src ./src
RUN uv sync --frozen --no-dev --no-editable

FROM ${BASE_IMAGE} AS runtime
# LightGBM needs the OpenMP runtime.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 --user-group churnops \
    && mkdir /data && chown churnops:churnops /data
COPY --from=build --chown=churnops:churnops /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHURNOPS_WORKSPACE=/data \
    CHURNOPS_SERVING__HOST=0.0.0.0
USER 10001:10001
WORKDIR /data
EXPOSE 8000
ENTRYPOINT ["churnops"]
CMD ["serve"]
