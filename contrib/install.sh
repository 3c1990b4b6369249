#!/bin/sh
# Install xmpp-active-users beside Debian's Prosody: the commands of README.md's "Setting it up
# on your server", in the same order (tests/test_install_recipe.py checks that both agree, and
# runs this script). Safe to run again: it keeps an existing config, secret and store.
#
# As root, in a clone of the repository, after adding the privilege lines to your VirtualHost:
#   DOMAIN=example.org ADMIN=admin@example.org sh contrib/install.sh
set -eu
cd "$(dirname "$0")/.."
: "${DOMAIN:?set DOMAIN to the VirtualHost whose users are counted, e.g. DOMAIN=example.org}"
: "${ADMIN:?set ADMIN to the account that may ask for the figures, e.g. ADMIN=admin@example.org}"
COMPONENT=${COMPONENT:-active.$DOMAIN}
# Only for the test suite, which installs into a temporary folder: ROOT prefixes every path,
# BOT_USER names the bot's user, SYS=: skips the commands that change packages and services.
ROOT=${ROOT:-}
BOT_USER=${BOT_USER:-xmpp-active-users}
SYS=${SYS:-}

# --- the recipe (README.md shows these lines with ROOT and SYS empty) ---------------------------
$SYS apt-get install -y python3-venv prosody-modules
/usr/bin/python3 -m venv $ROOT/opt/xmpp-active-users
$ROOT/opt/xmpp-active-users/bin/pip install --quiet .
ln -sf $ROOT/opt/xmpp-active-users/bin/xmpp-active-users $ROOT/usr/local/bin/xmpp-active-users
adduser --system --group --home $ROOT/var/lib/xmpp-active-users $BOT_USER
install -d -m 0700 -o $BOT_USER -g $BOT_USER $ROOT/var/lib/xmpp-active-users
install -d -m 0755 $ROOT/etc/xmpp-active-users
test -s $ROOT/etc/xmpp-active-users/secret || (umask 077 && openssl rand -hex 32 > $ROOT/etc/xmpp-active-users/secret)
chgrp $BOT_USER $ROOT/etc/xmpp-active-users/secret && chmod 0640 $ROOT/etc/xmpp-active-users/secret
test -e $ROOT/etc/xmpp-active-users/config.toml || sed -e "s/admin@example\.org/$ADMIN/" -e "s/example\.org/$DOMAIN/g" config.example.toml > $ROOT/etc/xmpp-active-users/config.toml
test -z "$ROOT" || sed -i -e "s|\"/etc/xmpp|\"$ROOT/etc/xmpp|" -e "s|\"/var/lib/xmpp|\"$ROOT/var/lib/xmpp|" $ROOT/etc/xmpp-active-users/config.toml  # tests only
chgrp $BOT_USER $ROOT/etc/xmpp-active-users/config.toml && chmod 0640 $ROOT/etc/xmpp-active-users/config.toml
cat > $ROOT/etc/prosody/conf.d/$COMPONENT.cfg.lua <<EOF
-- The bot xmpp-active-users: its address, and the secret of /etc/xmpp-active-users/secret.
Component "$COMPONENT"
    component_secret = "$(cat $ROOT/etc/xmpp-active-users/secret)"
    modules_enabled = { "privilege" }
EOF
chgrp prosody $ROOT/etc/prosody/conf.d/$COMPONENT.cfg.lua && chmod 0640 $ROOT/etc/prosody/conf.d/$COMPONENT.cfg.lua
$SYS systemctl restart prosody
runuser -u $BOT_USER -g $BOT_USER -G prosody -- $ROOT/usr/local/bin/xmpp-active-users import --config $ROOT/etc/xmpp-active-users/config.toml --from prosody-lastlog2 $ROOT/var/lib/prosody || echo "Nothing imported (see above): the bot counts from its first start."
cp contrib/systemd/xmpp-active-users.service $ROOT/etc/systemd/system/
test -z "$ROOT" || sed -i -e "s/^User=.*/User=$BOT_USER/" -e "s/^Group=.*/Group=$BOT_USER/" $ROOT/etc/systemd/system/xmpp-active-users.service  # tests only
$SYS systemctl daemon-reload
$SYS systemctl enable --now xmpp-active-users
