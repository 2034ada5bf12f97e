/* Mosquitto 2.0 plugin: a client id must belong to the user that connects.
 *
 * Same rule as the embedded broker (common/clientid.py): a client id is "<user>:<name>" with a
 * non-empty name, so one user cannot take over (and so disconnect) another user's client id.
 * The basic-auth callback runs before the password file check and before Mosquitto looks up an
 * existing session of that id. It only refuses (MOSQ_ERR_AUTH) or defers: the password file
 * still decides on the password. Built and configured by broker/mosquitto.py.
 */
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

static mosquitto_plugin_id_t *plugin_id;

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	const char *id = mosquitto_client_id(ed->client);
	const char *user = ed->username;
	size_t n;

	(void)event;
	(void)userdata;
	if (user == NULL || id == NULL) {
		return MOSQ_ERR_AUTH;
	}
	n = strlen(user);
	if (strncmp(id, user, n) != 0 || id[n] != ':' || id[n + 1] == '\0') {
		mosquitto_log_printf(MOSQ_LOG_WARNING,
			"ars: refusing client id %s for user %s (use %s:<name>)", id, user, user);
		return MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_PLUGIN_DEFER;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	(void)supported_version_count;
	(void)supported_versions;
	return 5;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	plugin_id = identifier;
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	return mosquitto_callback_unregister(plugin_id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
}
