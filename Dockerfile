# One image for every service of docker-compose.yml; the command picks the service.
FROM python:3.11.7-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY schemas ./schemas
COPY plumbing ./plumbing
COPY ingest ./ingest
COPY streams ./streams
COPY sinks ./sinks
COPY cosnap_metrics ./cosnap_metrics
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --uid 10001 --create-home cosnap \
    && mkdir /data && chown cosnap /data
USER cosnap
ENV COSNAP_DATA_DIR=/data
# The service's own health endpoint, asked by the service's own command (no curl in a slim
# image): `cosnap-metrics healthcheck` finds which service process 1 runs.
HEALTHCHECK --interval=10s --timeout=10s --start-period=60s --retries=3 \
    CMD ["cosnap-metrics", "healthcheck"]
ENTRYPOINT ["cosnap-metrics"]
