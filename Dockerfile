# One image for every RouteLedger process: `docker run IMAGE api|worker|beat|dashboard|migrate`.

# Build stage: wheels of the service, the SDK and every dependency.
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip
COPY pyproject.toml README.md ./
COPY app app
COPY migrations migrations
COPY workers workers
COPY dashboards dashboards
COPY tools tools
COPY sdk sdk
RUN pip wheel --no-cache-dir --wheel-dir /wheels . ./sdk

# Run stage: only the installed wheels, run as an unprivileged user.
FROM python:3.11-slim
RUN useradd --create-home --uid 10001 routeledger
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER routeledger
WORKDIR /home/routeledger
ENV ROUTELEDGER_DATA_DIR=/home/routeledger/data \
    ROUTELEDGER_API_HOST=0.0.0.0 \
    ROUTELEDGER_DASHBOARD_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8000 8050
ENTRYPOINT ["routeledger"]
CMD ["api"]
