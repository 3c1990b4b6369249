-- Prosody configuration for the docker-compose demo (docker-compose.yml at the repo root).
-- Mounted read-only at /etc/prosody/prosody.cfg.lua, where the official image (prosodyim/prosody)
-- reads its configuration; it replaces the image's own environment-driven config entirely.
-- A local demo, not a production server: no TLS certificates, no server-to-server.
-- Check it with:  prosodyctl --config contrib/docker/prosody.cfg.lua check config

-- mod_privilege (XEP-0356) is a community module that the image does not ship:
-- docker-compose.yml mounts a mod_privilege folder here (see the comments there).
plugin_paths = { "/opt/prosody-modules" }

-- Listen on every interface of the container: the bot reaches the component port over the
-- compose network as prosody:5347. Only c2s (5222) is published, and only on the host's loopback.
interfaces = { "*" }
component_interfaces = { "*" }
c2s_ports = { 5222 }
component_ports = { 5347 }

modules_enabled = {
	"roster"; "saslauth"; "disco"; "ping"; "presence";
	"privilege"; -- XEP-0356: forwards users' presence to the component (see VirtualHost below)
	"admin_shell"; -- docker compose exec prosody prosodyctl shell
}
modules_disabled = { "s2s" }
s2s_ports = { }

-- Demo on the loopback without certificates: clients log in with SCRAM over plain TCP.
-- For a real server, add certificates and remove this line.
c2s_require_encryption = false
authentication = "internal_hashed"

log = { info = "*console" }

VirtualHost "example.test"
	-- The component receives the presence of every user of this host, without roster subscription.
	privileged_entities = {
		["active.example.test"] = { presence = "managed_entity" };
	}

Component "active.example.test"
	-- The same secret as the bot's: compose passes XMPP_ACTIVE_USERS_SECRET to both containers, and
	-- Prosody (0.12 and later) reads any environment variable NAME in its config as ENV_NAME.
	component_secret = ENV_XMPP_ACTIVE_USERS_SECRET
	modules_enabled = { "privilege" }
