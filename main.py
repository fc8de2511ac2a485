"""Entry point the Dify plugin daemon starts (`python -m main`)."""

from dify_plugin import DifyPluginEnv, Plugin

# Dify stops a tool call after 600 s by default (PLUGIN_MAX_EXECUTION_TIMEOUT); allow the plugin as long.
plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=600))

if __name__ == "__main__":
    plugin.run()
