# The tradeflow image of compose.yaml: the package and its console scripts (tradeflow, dramatiq).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY actors actors
COPY api api
COPY orchestration orchestration
COPY saga saga
COPY storage storage
RUN pip install --no-cache-dir '.[all]'
ENV PYTHONUNBUFFERED=1
CMD ["tradeflow", "--help"]
