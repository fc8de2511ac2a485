"""Entry point the Dify plugin daemon starts (`python -m main`)."""

from dify_plugin import DifyPluginEnv, Plugin

from audio.ffmpeg import warm_up
from tools.cooperative_output import make_output_cooperative
from tools.whole_output import make_stdout_whole

# Let heartbeats and other invocations run while the SDK writes a long file's ~900 blob chunks.
make_output_cooperative()
# Every protocol line reaches the daemon whole, even with PYTHONUNBUFFERED=1 (a signal can cut an unbuffered
# write short); before Plugin() writes the manifest.
make_stdout_whole()

# Dify stops a tool call after 600 s by default (PLUGIN_MAX_EXECUTION_TIMEOUT); allow the plugin as long.
plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=600))

if __name__ == "__main__":
    # Locate ffmpeg and load what its first run needs before serving, not inside the first invocation.
    warm_up()
    plugin.run()
