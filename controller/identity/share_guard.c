/*
 * edgefleet share guard: a Mosquitto 2.0 plugin (API v5) that refuses every
 * SUBSCRIBE to a shared subscription ("$share/<group>/<filter>") unless the
 * client's username is one of the listed controller identities.
 *
 * Why: Mosquitto 2.0's acl_file grants every SUBSCRIBE and checks read access
 * per delivered message. A device in the controllers' group would be handed a
 * share of every device's messages, which the broker then drops.
 *
 * Plugins are asked before the acl_file, in the order of their "plugin" lines;
 * the first answer other than "defer" decides. This plugin answers only for
 * "$share/..." subscriptions and defers everything else, so the acl_file (and
 * the dynamic-security plugin) keep deciding the rest.
 *
 *   plugin /path/share_guard.so
 *   plugin_opt_share_subscribers _controller _controller-2
 *
 * Built by controller/identity/share_guard.py (needs a C compiler and the
 * mosquitto-dev and libmosquitto-dev headers).
 */
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define SHARE_PREFIX "$share/"
#define MAX_SUBSCRIBERS 64

static mosquitto_plugin_id_t *plugin_id;
static char *names;                          /* the option's value, split in place */
static const char *subscribers[MAX_SUBSCRIBERS];
static int subscriber_count;

static int allowed(const char *username)
{
	if(username == NULL) return 0;
	for(int i = 0; i < subscriber_count; i++){
		if(strcmp(username, subscribers[i]) == 0) return 1;
	}
	return 0;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;

	if(ed->access != MOSQ_ACL_SUBSCRIBE) return MOSQ_ERR_PLUGIN_DEFER;
	if(ed->topic == NULL || strncmp(ed->topic, SHARE_PREFIX, strlen(SHARE_PREFIX)) != 0) return MOSQ_ERR_PLUGIN_DEFER;
	if(allowed(mosquitto_client_username(ed->client))) return MOSQ_ERR_PLUGIN_DEFER;
	return MOSQ_ERR_ACL_DENIED;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	plugin_id = identifier;
	subscriber_count = 0;
	for(int i = 0; i < option_count; i++){
		if(strcmp(options[i].key, "share_subscribers") != 0) continue;
		free(names);
		names = strdup(options[i].value);
		if(names == NULL) return MOSQ_ERR_NOMEM;
		subscriber_count = 0;
		for(char *save = NULL, *tok = strtok_r(names, " \t,", &save); tok; tok = strtok_r(NULL, " \t,", &save)){
			if(subscriber_count == MAX_SUBSCRIBERS){
				mosquitto_log_printf(MOSQ_LOG_ERR, "share_guard: more than %d share_subscribers", MAX_SUBSCRIBERS);
				return MOSQ_ERR_INVAL;
			}
			subscribers[subscriber_count++] = tok;
		}
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "share_guard: $share subscriptions only for %d identities", subscriber_count);
	return mosquitto_callback_register(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL);
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	int rc = mosquitto_callback_unregister(plugin_id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	free(names);
	names = NULL;
	subscriber_count = 0;
	return rc;
}
