# Grayscale proxy image: `docker build -t grayscale .`, then `docker run -p 8080:8080 grayscale`.
# The Python CI tests on, and the library versions it tests (constraints.txt).
# The wheel is built with the hot modules compiled by mypyc (setup.py; GRAYSCALE_PURE=1 at run
# time runs their sources): a C compiler in this stage only.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py build_backend.py README.md LICENSE constraints.txt ./
COPY proxy ./proxy
RUN GRAYSCALE_COMPILE=1 PIP_CONSTRAINT=/src/constraints.txt \
    pip wheel --no-cache-dir --constraint constraints.txt --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home grayscale \
    && mkdir -p /var/lib/grayscale && chown grayscale /var/lib/grayscale
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels grayscale && rm -rf /wheels
# The config it runs without a mount (mount a directory of your own over /etc/grayscale).
COPY config/container.yaml /etc/grayscale/config.yaml
COPY config/example.yaml /etc/grayscale/example.yaml
USER grayscale
# Rollout state (grayscale-state.json) is written here: mount a volume to keep it across restarts.
WORKDIR /var/lib/grayscale
VOLUME /var/lib/grayscale
EXPOSE 8080 9901
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:9901/readyz', timeout=2)"]
ENTRYPOINT ["grayscale"]
CMD ["serve", "--config", "/etc/grayscale/config.yaml", "--log-format", "json"]
