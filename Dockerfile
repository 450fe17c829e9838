# Grayscale proxy image: `docker build -t grayscale .`
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
RUN useradd --system --uid 10001 --no-create-home grayscale \
    && mkdir -p /var/lib/grayscale && chown grayscale /var/lib/grayscale
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY config/example.yaml /etc/grayscale/example.yaml
USER grayscale
# Rollout state (grayscale-state.json) is written here: mount a volume to keep it across restarts.
WORKDIR /var/lib/grayscale
VOLUME /var/lib/grayscale
EXPOSE 8080 9901
ENTRYPOINT ["grayscale"]
CMD ["serve", "--config", "/etc/grayscale/config.yaml", "--log-format", "json"]
