# The bot as a container image. docker-compose.yml runs it next to Prosody; on its own:
#   docker build -t xmpp-active-users .
#   docker run -e XMPP_ACTIVE_USERS_SECRET=... -v xmpp-active-users-data:/data \
#     -v "$PWD/config.toml:/etc/xmpp-active-users/config.toml:ro" xmpp-active-users
# config.toml: see config.example.toml; set [store] path inside /data (e.g. /data/activity.db).
FROM python:3.11-slim

# Logs go straight to `docker logs`; no pip cache or .pyc files left in the image.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package from what it is built from (metadata, README as its description, code),
# then drop the sources: only the installed package and its `xmpp-active-users` script remain.
WORKDIR /tmp/src
COPY pyproject.toml README.md ./
COPY bot/ bot/
RUN pip install . && rm -rf /tmp/src

# An unprivileged account owns the store folder. A named volume mounted on /data starts as a copy
# of this folder, ownership included, so the bot can write there without root.
RUN groupadd --system --gid 10001 xmpp-active-users \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin xmpp-active-users \
 && mkdir -p /data /etc/xmpp-active-users \
 && chown xmpp-active-users:xmpp-active-users /data
VOLUME /data
WORKDIR /data
# Numeric, so that orchestrators can check it is not root (runAsNonRoot).
USER 10001:10001

# Any subcommand works (`docker compose run --rm bot count --config ...`); the default runs the bot.
ENTRYPOINT ["xmpp-active-users"]
CMD ["run", "--config", "/etc/xmpp-active-users/config.toml"]
