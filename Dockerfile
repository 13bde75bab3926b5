# One image for the four services and the bitloot command line; the command
# picks what runs: `python -m services.payment`, `bitloot migrate`, ...

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/bitloot
ENV PATH=/opt/bitloot/bin:$PATH
WORKDIR /src

# Dependencies first, in their own layer, so a code change does not refetch them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt

COPY shared/ shared/
COPY services/ services/
COPY contracts/ contracts/
RUN pip install --no-deps .


FROM python:3.11-slim
ENV PATH=/opt/bitloot/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BITLOOT_LOG_FORMAT=json

# The folders are where docker-compose.yml mounts named volumes: a new volume
# takes the owner of the folder it is mounted on, so the services can write.
RUN useradd --system --uid 10001 --user-group --create-home bitloot \
    && install -d -o bitloot -g bitloot \
        /var/lib/bitloot/targets \
        /var/lib/bitloot/signing-key \
        /var/lib/bitloot/public-key \
        /var/lib/bitloot/prometheus
COPY --from=build /opt/bitloot /opt/bitloot

USER bitloot
WORKDIR /home/bitloot

# Prometheus scrapes the address an instance writes to its discovery file.
# Unless told otherwise, that is the container's hostname: unique to each
# replica and resolved by Docker's DNS on the compose network, so
# `docker compose up --scale payment=3` needs no per-replica settings.
ENTRYPOINT ["/bin/sh", "-c", "export BITLOOT_ADVERTISE_HOST=\"${BITLOOT_ADVERTISE_HOST:-$(hostname)}\"; exec \"$@\"", "--"]
CMD ["bitloot", "--help"]
