"""The tool provider. It has no credentials of its own: the TTS model chosen in the model selector brings them."""

from typing import Any

from dify_plugin import ToolProvider


class TtsPipelineProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        """Nothing to validate: the provider declares no credentials."""
