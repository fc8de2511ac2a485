"""Entry point the Dify plugin daemon starts (`python -m main`)."""

import logging

from dify_plugin import DifyPluginEnv, Plugin
from dify_plugin.config.logger_format import plugin_logger_handler

from audio.ffmpeg import warm_up
from audio.pipeline import remove_stale_workdirs
from tools.cooperative_output import make_output_cooperative
from tools.whole_output import make_stdout_whole

# Let heartbeats and other invocations run while the SDK writes a long file's ~900 blob chunks.
make_output_cooperative()
# Every protocol line reaches the daemon whole, even with PYTHONUNBUFFERED=1 (a signal can cut an unbuffered
# write short); before Plugin() writes the manifest.
make_stdout_whole()

# Dify stops a tool call after 600 s by default (PLUGIN_MAX_EXECUTION_TIMEOUT); allow the plugin as long.
plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=600))

# Start-up events go to the daemon's log as SDK log events (stdout is the protocol channel: never print).
log = logging.getLogger("tts_pipeline.startup")
log.setLevel(logging.INFO)
log.addHandler(plugin_logger_handler)
if plugin_logger_handler not in logging.getLogger("audio").handlers:  # tools/tts_pipeline.py adds it too
    logging.getLogger("audio").addHandler(plugin_logger_handler)

if __name__ == "__main__":
    # Job directories of a plugin process the daemon killed (execution timeout) are removed here.
    for stale in remove_stale_workdirs():
        log.info("removed the stale job directory %s", stale)
    # Choose ffmpeg (probe it) and load what its first run needs before serving, not inside the first job.
    caps = warm_up()
    log.info("%s", caps.describe() if caps else "no usable ffmpeg: every job will fail until one is installed")
    plugin.run()
